"""``Retriever``: index a codebase or a document collection and search it, the facade behind
``mret index/search/status/remove``. The configuration lives in config.py, the indexing run in indexing.py, the
folder mechanics of ``index(rebuild=True)`` in rebuild.py.

Safe to share between threads for reading: the model and the index are opened once, under a lock, on first use;
searches from many threads run against the index's last commit while another process (or ``index()``) writes.
"""

from __future__ import annotations

import posixpath
import shutil
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from indexes import Document, FaissIndex, PlaidIndex
from indexes.base import FILES, LOCK, STORE
from modernretrieval.errors import SettingsError
from modernretrieval.files import folder_bytes, fsync_dir

from ..heads import DEFAULT_MODELS, KINDS, Head, Kind, load_head, set_document_length
from ..heads.precision import check as check_precision
from ..heads.token_pooling import check_pool_factor
from .config import CONFIG, FORMAT, INDEX, INDEX_DIR_NAME, IndexConfig, RetrieverError, find_index_dir, model_name, \
    read_last_run
from .indexing import MIN_CHUNK_TOKENS, IndexSettings, IndexSummary, chunk_budget, drop_chunks, pending_chunks, \
    run_index
from .rebuild import REBUILD_WAIT, fresh_name, rebuild_lock, remove_folder, remove_leftovers
from ..fusion import MODES, fuse
from .ranking import Rules, rerank
from .snippets import best_lines, query_terms
from .alignment import Alignment, hit_alignment
from .spans import best_span
from .sources import DEFAULT_MAX_FILE_BYTES, files_under, language_of, matches_type


Mode = Literal["hybrid", "semantic", "lexical"]
CANDIDATES = 50  # documents taken from each side before fusion and the ranking rules (at least 3 k)
# BM25 field weights (path, symbols, body): a name in a path or a definition counts 3 times one in the text
# (bench/tune_hybrid.py on the code benchmark's dev split; README, "Hybrid search")
LEXICAL_WEIGHTS = (3.0, 3.0, 1.0)
# BM25's k1 and b for code: the upper end of the usual k1 range (1.2-2.0) was best on the code benchmark's dev split
# (descriptions +0.031 nDCG@10 over Lucene's 0.9 / 0.4, which prose keeps: lexical.K1, lexical.B)
LEXICAL_BM25 = (2.0, 0.75)


@dataclass
class Hit:
    path: str  # relative to the indexed root
    start_line: int
    end_line: int
    score: float
    snippet: str
    snippet_line: int  # the line number of the snippet's first line
    text: str  # the whole chunk
    chunk_start_line: int = 0  # the whole chunk's lines (start_line-end_line is its best-matching part)
    chunk_end_line: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "start_line": self.start_line, "end_line": self.end_line,
                "score": round(self.score, 6), "snippet": self.snippet}


class Retriever:
    """Index a tree and search it. ``model``/``kind``/``max_length`` are needed only to create an index; an
    existing one keeps the ones it was built with (passing others is an error: chunks and vectors would mix).

    ``max_length``: tokens per chunk, the model's [CLS]/[SEP] and prompt included; 0 (default) is the model's
    maximum (8192 for ModernBERT). ``batch_tokens``: tokens encoded per commit (what a kill can lose).
    ``pool_factor``: colbert only, documents' token vectors pooled to about 1/pool_factor (``ColBERT.pool_factor``),
    fixed when the index is created like the model (None: the index's own, or 1 for a new one).
    ``device``/``dtype``: where and in which format the model runs (heads/precision.py; the command line passes
    "auto"). A run setting, not the index's: bf16/int8 vectors are within cosine 0.99 of float32 ones, so an index
    built in one precision is searched in any other (README, "Precision and device")."""

    def __init__(self, root: str | Path | None = None, index_dir: str | Path | None = None,
                 model: str | Path | None = None, kind: Kind | None = None, max_length: int | None = None,
                 batch_tokens: int = 65536, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
                 show_progress: bool | None = None, pool_factor: int | None = None,
                 device: str | None = "cpu", dtype: str | None = "float32"):
        if pool_factor is not None:
            check_pool_factor(pool_factor)
        check_precision(device, dtype)  # a bad --device/--dtype fails before any work; "auto" is resolved at load
        self._precision = {"device": device, "dtype": dtype}
        default_dir = index_dir is None
        self.index_dir = Path(root or ".") / INDEX_DIR_NAME if default_dir else Path(index_dir)
        self.config = IndexConfig.read(self.index_dir)
        if self.config is None or default_dir or root is not None:
            self.root = Path(root or ".").resolve()
            if not self.root.is_dir():
                raise RetrieverError(f"{root} is not a folder")
        else:
            self.root = Path(self.config.root)
            moved_to = self.index_dir.resolve().parent
            if not self.root.is_dir() and self.index_dir.name == INDEX_DIR_NAME and moved_to.is_dir():
                self.root = moved_to  # the tree moved with its .mret: its files are where the index is now
                self.config.root = str(moved_to)  # (config.json is rewritten by the next `mret index`)
        if self.config is not None:
            if str(self.root) != self.config.root:
                if not default_dir:
                    raise RetrieverError(f"{self.index_dir} indexes {self.config.root}, not {self.root}; "
                                         "choose another --index-dir")
                self.config.root = str(self.root)  # the tree was moved, its .mret with it
                self.config.write(self.index_dir)
            self.config.check_same(self.index_dir, model, kind, max_length, pool_factor)
        elif kind is not None and kind not in KINDS:
            raise RetrieverError(f"kind must be dense or colbert, got {kind!r}")
        elif pool_factor is not None and pool_factor > 1 and kind != "colbert":
            raise RetrieverError("a pool factor pools token vectors: it needs kind colbert (--kind colbert)")
        self._wanted = {"model": model, "kind": kind, "max_length": max_length, "pool_factor": pool_factor}
        self.settings = IndexSettings(batch_tokens, max_file_bytes, show_progress)
        self._lock = threading.Lock()  # the model and the index are loaded once, whichever thread asks first
        self._model: Head | None = None
        self._index: FaissIndex | PlaidIndex | None = None
        self._executor: ThreadPoolExecutor | None = None  # hybrid search's lexical side, started on first use
        self._config_stamp: tuple[int, int, int] | None = None  # config.json as _follow_swap last saw it

    @classmethod
    def open(cls, index_dir: str | Path, **kwargs: Any) -> "Retriever":
        """An existing index folder (for search, status, remove)."""
        if not (Path(index_dir) / CONFIG).exists():
            raise RetrieverError(f"no index at {index_dir} (run `mret index PATH` first)")
        return cls(index_dir=index_dir, **kwargs)

    find = staticmethod(find_index_dir)

    # ----- the model and the index, loaded on first use
    @property
    def model(self) -> Head:
        """The head (the index's own model, or the one asked for at creation)."""
        if self._model is None:
            with self._lock:
                if self._model is None:
                    self._model = self._load_model()
        return self._model

    @property
    def model_name(self) -> str:
        """The model the index is built with, as config.json records it (the one asked for, for a new index)."""
        if self.config is not None:
            return self.config.model
        return model_name(self._wanted["model"] or DEFAULT_MODELS[self._wanted["kind"] or "dense"])

    def _load_model(self) -> Head:
        if self.config is not None:
            return load_head(self.config.model, self.config.kind, self.config.max_length,
                             pool_factor=self.config.pool_factor, **self._precision)
        kind = self._wanted["kind"] or "dense"
        model = load_head(self._wanted["model"] or DEFAULT_MODELS[kind], kind,
                          pool_factor=self._wanted["pool_factor"] or 1, **self._precision)
        try:
            set_document_length(model, 0 if self._wanted["max_length"] is None else self._wanted["max_length"])
        except SettingsError as error:  # --max-length outside the model's range
            raise RetrieverError(str(error)) from None
        return model

    @property
    def vectors(self) -> FaissIndex | PlaidIndex:
        if self._index is None:
            with self._lock:
                if self._index is None:
                    if self.config is None:
                        raise RetrieverError(f"no index at {self.index_dir} (run `mret index PATH` first)")
                    self._index = self.config.open_vectors(self.index_dir)
        return self._index

    def close(self) -> None:
        with self._lock:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None
            if self._index is not None:
                self._index.close()
                self._index = None

    def __enter__(self) -> "Retriever":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----- indexing
    def index(self, files: Iterable[str] | None = None, rebuild: bool = False) -> IndexSummary:
        """Bring the index up to date with the tree (or with exactly the files listed, relative to the root).

        ``rebuild``: index the tree into a new index beside the current one and swap it in when it is complete
        (rebuild.py): the way back from a damaged index, which is never opened; the settings stay the index's own.
        A rebuild killed midway leaves the current index as it was."""
        if self.config is None:
            self._create()
        elif rebuild:
            return self._rebuild(files)
        else:
            self._follow_rebuilds()
        try:
            return run_index(self.root, self.index_dir, self.vectors, lambda: self.model, self.settings, files)
        except Exception:
            if self._rebuilt_meanwhile():  # its folder was deleted under this run: not a damaged index
                raise RetrieverError(f"{self.index_dir} was rebuilt by another process (`mret index --rebuild`) "
                                     "while this run wrote to it; run `mret index` again") from None
            raise

    def _follow_rebuilds(self) -> None:
        """Delete what killed rebuilds left (unless a rebuild is running), and follow a rebuild that another process
        made since this object read config.json: the folder it names now, not the one it named then."""
        with rebuild_lock(self.index_dir, timeout=0) as held:
            current = IndexConfig.read(self.index_dir) or self.config
            assert current is not None and self.config is not None
            if held:
                remove_leftovers(self.index_dir, current.index)
        self._switch_to(current)

    def _follow_swap(self) -> None:
        """Before a search: follow a rebuild that another process swapped in (config.json renamed over) since this
        object last looked. A long-lived reader (a server, the MCP tools) would otherwise keep searching the old
        folder, which the rebuild deleted. One stat a search; config.json is read only when its stat changed."""
        try:
            stat = (self.index_dir / CONFIG).stat()
        except OSError:
            return
        stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if stamp == self._config_stamp:
            return
        try:
            current = IndexConfig.read(self.index_dir)
        except RetrieverError:  # a config.json being replaced or damaged: keep the index this object has
            return
        self._config_stamp = stamp
        self._switch_to(current)

    def _switch_to(self, current: IndexConfig | None) -> None:
        """Use the vector folder that ``current`` (config.json as read now) names, if a rebuild changed it."""
        if current is not None and self.config is not None and current.index != self.config.index:
            with self._lock:
                self.config, self._index = current, None  # threads searching keep the index object they hold

    def _rebuilt_meanwhile(self) -> bool:
        try:
            current = IndexConfig.read(self.index_dir)
        except RetrieverError:
            return False
        return current is not None and self.config is not None and current.index != self.config.index

    def _rebuild(self, files: Iterable[str] | None) -> IndexSummary:
        with rebuild_lock(self.index_dir, timeout=REBUILD_WAIT) as held:
            if not held:
                raise RetrieverError(f"another rebuild of {self.index_dir} (`mret index --rebuild`) is running")
            old = IndexConfig.read(self.index_dir) or self.config
            assert old is not None
            remove_leftovers(self.index_dir, old.index)  # a killed rebuild's partial folder
            new = replace(old, index=fresh_name())
            new.create_vectors(self.index_dir)
            try:
                with new.open_vectors(self.index_dir) as vectors:
                    summary = run_index(self.root, self.index_dir, vectors, lambda: self.model, self.settings, files)
            except BaseException:
                shutil.rmtree(self.index_dir / new.index, ignore_errors=True)
                raise
            fsync_dir(self.index_dir)  # the new folder's entry, before config.json names it
            new.write(self.index_dir)  # the swap: one atomic rename of config.json
            with self._lock:
                self.config, self._index = new, None  # threads searching keep the index object they hold
            remove_folder(self.index_dir / old.index)
        return summary

    def _create(self) -> None:
        self._check_new_index_dir()  # before the model loads
        model = self.model
        config = IndexConfig(
            format=FORMAT, root=str(self.root), model=model_name(self._wanted["model"] or DEFAULT_MODELS[model.kind]),
            kind=model.kind, max_length=model.document_length,
            max_length_setting=0 if self._wanted["max_length"] is None else self._wanted["max_length"], dim=model.dim,
            pool_factor=getattr(model, "pool_factor", 1))
        budget = chunk_budget(model)
        if budget < MIN_CHUNK_TOKENS:  # refused before anything is written: no index that every run fails on
            length = model.document_length
            raise RetrieverError(f"--max-length {length} is too small for this model: it leaves {budget} tokens of "
                                 f"text per chunk; use at least {length - budget + MIN_CHUNK_TOKENS}")
        if (self.index_dir / INDEX).exists():  # a killed first run, before config.json: start again (checked above)
            shutil.rmtree(self.index_dir / INDEX)
        self.index_dir.mkdir(parents=True, exist_ok=True)
        config.create_vectors(self.index_dir)
        config.write(self.index_dir)  # last: a folder with config.json holds a whole empty index
        self.config = config

    def _check_new_index_dir(self) -> None:
        """A first run writes into a new or empty folder, or one that a killed first run left (its vector folder
        alone, which it deletes): never into the tree itself, a file, or a folder of the user's own files."""
        folder = self.index_dir
        if folder.exists() and not folder.is_dir():
            raise RetrieverError(f"{folder} is a file; the index needs a folder (choose another --index-dir)")
        if folder.resolve() == self.root:
            raise RetrieverError(f"the index folder {folder} is the tree itself; choose a folder of its own "
                                 f"(by default {self.root / INDEX_DIR_NAME})")
        if not folder.is_dir():
            return
        leftover = folder / INDEX
        others = sorted(p.name for p in folder.iterdir() if p.name != INDEX)
        ours = leftover.is_dir() and all(p.name in (FILES, LOCK) or p.name.startswith(STORE)
                                         for p in leftover.iterdir())
        if others or (leftover.exists() and not ours):
            shown = ", ".join((others or [INDEX])[:3]) + (", ..." if len(others) > 3 else "")
            raise RetrieverError(f"{folder} holds files that are not an index ({shown}); choose a new or empty "
                                 "folder for the index")

    # ----- searching
    def search(self, query: str, k: int = 10, path_glob: str | Sequence[str] | None = None,
               file_type: str | Sequence[str] | None = None, mode: Mode = "hybrid",
               rules: Rules | None = None) -> list[Hit]:
        """The ``k`` best chunks for ``query``, best first. ``path_glob``: gitignore-style patterns over paths
        relative to the root ("*.py", "src/**/test_*.py"); ``file_type``: languages or extensions ("python", "md").

        ``mode``: "hybrid" (default) fuses the embedding ranking with BM25 over paths, defined names and text
        (fusion.py); "semantic" and "lexical" use one side. ``rules``: the code-aware ranking (ranking.py; default
        all on, ``Rules.off()`` for none). Each hit's lines are its best-matching part (spans.py); ``text`` is the
        whole chunk, whose lines are ``chunk_start_line``-``chunk_end_line``. A hit whose lines lie within a better
        hit's in the same file (a definition in the overlap of two chunks) is left out, and the next one comes up."""
        if not isinstance(query, str) or not query.strip():
            raise RetrieverError("the query is empty")
        if k < 1:
            raise RetrieverError(f"k must be at least 1, got {k}")
        if mode not in MODES:
            raise RetrieverError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        rules = Rules() if rules is None else rules
        self._follow_swap()
        index = self.vectors
        allowed = self._allowed(path_glob, file_type)
        if allowed is not None and not allowed:
            return []
        if mode != "semantic" and not index.store.lexical_ready:
            mode = "semantic"  # an old index opened read-only: the next `mret index` adds the lexical side
        depth = max(CANDIDATES, 3 * k) if mode == "hybrid" or rules.any else k
        candidates, encoded = self._candidates(query, mode, depth, allowed)
        terms = query_terms(query)
        hits: list[Hit] = []
        kept: dict[str, list[tuple[int, int]]] = {}  # path -> the spans of the hits kept
        for doc, score in rerank(query, candidates, rules, len(candidates)):
            if len(hits) == k:
                break
            start, end = best_span(doc, query, self._alignment(index, query, encoded, doc))
            spans = kept.setdefault(doc.source or "", [])
            if any(first <= start and end <= last for first, last in spans):
                continue  # chunks overlap: a definition in the overlap is in two of them, with the same span
            spans.append((start, end))
            text = doc.text or ""
            first = doc.start_line or 1
            span_text = "\n".join(text.split("\n")[start - first:end - first + 1])
            offset, lines = best_lines(span_text, terms)
            hits.append(Hit(doc.source or "", start, end, float(score), "\n".join(lines), start + offset, text,
                            first, doc.end_line or first))
        return hits

    def _alignment(self, index: FaissIndex | PlaidIndex, query: str, encoded: list[Any] | None,
                   doc: Document) -> Callable[[], Alignment | None] | None:
        """ColBERT (PLAID) indexes: the query's token alignment with ``doc``, from the index's stored vectors
        (alignment.py), computed only if the span rules ask for it; None for dense indexes and lexical searches."""
        if encoded is None or not isinstance(index, PlaidIndex):
            return None
        return lambda: hit_alignment(index, self.model, query, encoded[0], doc)

    def _candidates(self, query: str, mode: Mode, depth: int,
                    allowed: list[str] | None) -> tuple[list[tuple[Document, float]], list[Any] | None]:
        """(document, score) best first: the semantic, lexical or fused ranking, ``depth`` long, and the encoded query
        (None in lexical mode). The vector search and the documents' lookup read one commit; in hybrid mode the
        lexical search runs in a worker thread (its own connection: it may see a newer commit, whose removed
        documents are then left out) while the query is encoded (SQLite works without the GIL)."""
        index, store = self.vectors, self.vectors.store
        lexical = None
        if mode != "semantic":
            lexical = self._worker().submit(store.lexical_search, query, depth, allowed, LEXICAL_WEIGHTS,
                                                *LEXICAL_BM25)
        encoded = self.model.encode_queries([query]) if mode != "lexical" else None
        with store.read_transaction():
            semantic = index.search(encoded, k=depth, filter=allowed)[0] if encoded is not None else []
            found = (lexical.result() if mode == "lexical" else semantic if lexical is None
                     else fuse(semantic, lexical.result(), depth))
            documents = index.documents([doc_id for doc_id, _ in found])
        return [(doc, score) for doc, (_, score) in zip(documents, found) if doc is not None], encoded

    def _worker(self) -> ThreadPoolExecutor:
        if self._executor is None:
            with self._lock:
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="mret-lexical")
        return self._executor

    def _allowed(self, path_glob: str | Sequence[str] | None, file_type: str | Sequence[str] | None) -> list[str] | None:
        """The chunk ids that the filters let through (None: no filter)."""
        if not path_glob and not file_type:
            return None
        import pathspec

        globs = [_root_relative(g, self.root) for g in ([path_glob] if isinstance(path_glob, str) else path_glob or [])]
        types = {t.lower().lstrip(".") for t in ([file_type] if isinstance(file_type, str) else file_type or [])}
        try:
            spec = pathspec.GitIgnoreSpec.from_lines(globs) if globs else None
        except ValueError as error:  # pathspec's GitIgnorePatternError: "!" alone, a trailing backslash
            raise RetrieverError(f"not a valid path glob: {error}") from None

        def wanted(source: str) -> bool:
            if spec is not None and not spec.match_file(source):
                return False
            return not types or matches_type(source, types)  # ripgrep's type globs (sources.TYPES)

        return self.vectors.store.ids_of_sources(wanted)

    # ----- removing and describing
    def remove(self, path: str | Path, whole_root: bool = True) -> tuple[int, int]:
        """Drop a file, or everything under a folder, from the index: (files, chunks) removed. ``path`` is relative
        to the current folder or to the root, or absolute under it. The next ``index`` takes it back unless it is
        ignored (.mretignore). ``whole_root=False`` refuses a path that is the root itself (`mret remove .`)."""
        relative = self._relative(path)
        known = self.vectors.store.files()
        paths = list(files_under(known, relative))
        candidate = Path(path)
        if not paths and not candidate.is_absolute() and not (Path.cwd() / candidate).exists():
            # not here on disk nor indexed as resolved from here: a path relative to the root (sub/f.py from sub/)
            relative = self._root_relative_path(candidate, path)
            paths = list(files_under(known, relative))
        if relative == "" and not whole_root:
            raise RetrieverError(f"{path} is the indexed root {self.root}: to drop the whole index, delete its folder "
                                 f"{self.index_dir}, or run `mret index --rebuild {self.root}` to build it again")
        if not paths:
            raise RetrieverError(f"nothing indexed at {relative or '.'}")
        ids = [i for p in paths for i in known[p].doc_ids]
        with self.vectors.transaction():  # encoded chunks and those still waiting for vectors alike
            drop_chunks(self.vectors, ids)
        return len(paths), len(ids)

    def _relative(self, path: str | Path) -> str:
        candidate = Path(path)
        absolute = (candidate if candidate.is_absolute() else Path.cwd() / candidate).resolve()
        if absolute.is_relative_to(self.root):
            relative = absolute.relative_to(self.root).as_posix()
            return "" if relative == "." else relative  # (not .strip("."): ".github" stays ".github")
        if not candidate.is_absolute():  # already relative to the root
            return self._root_relative_path(candidate, path)
        raise RetrieverError(f"{path} is not under the indexed root {self.root}")

    def _root_relative_path(self, candidate: Path, path: str | Path) -> str:
        """``candidate`` (relative) read as relative to the root, normalized; ``..`` out of the root is refused."""
        normal = posixpath.normpath(candidate.as_posix())
        if normal == ".." or normal.startswith("../"):
            raise RetrieverError(f"{path} is not under the indexed root {self.root}")
        return "" if normal == "." else normal

    def status(self) -> dict[str, Any]:
        """What is indexed: root, model, counts by language, tokens, size on disk, the last run; ``pending_chunks``:
        chunks searchable by their text only, their vectors not computed yet (a run in progress, or killed)."""
        self._follow_swap()
        config = self.config
        if config is None:
            raise RetrieverError(f"no index at {self.index_dir} (run `mret index PATH` first)")
        store = self.vectors.store
        languages = Counter(language_of(source) for source in store.sources())
        size = folder_bytes(self.index_dir)  # while another process may be committing to it
        return {"root": config.root, "index_dir": str(self.index_dir.resolve()), "model": config.model,
                "kind": config.kind, "max_length": config.max_length, "pool_factor": config.pool_factor,
                "files": store.count_sources(),
                "chunks": len(store), "pending_chunks": pending_chunks(self.vectors), "tokens": store.metadata_sum("tokens"),
                "languages": dict(languages.most_common()), "bytes_on_disk": size, "index": self.vectors.stats(),
                "last_run": read_last_run(self.index_dir)}


def _root_relative(glob: str, root: Path) -> str:
    """A glob as the shell or an editor writes it ("./src/**", the root's absolute path in front) is matched as the
    root-relative pattern it means; paths in the index are relative to the root."""
    prefix = root.as_posix().rstrip("/") + "/"
    if glob.startswith(prefix):
        return "/" + glob[len(prefix):]
    return glob[1:] if glob.startswith("./") else glob  # "/json/*.py": anchored at the root, as "./" meant
