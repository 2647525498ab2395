"""Index a codebase or a document collection and search it: the pipeline behind ``mret index/search/status/remove``.

    files (walk) -> text (read_source) -> chunks (chunk_text) -> vectors (the head) -> index + store -> hits

An index folder (default ``ROOT/.mret``) holds ``config.json`` (the root, the model, the kind, the chunk length),
``index/`` (a FaissIndex flat for dense, a PlaidIndex for colbert, each with its SQLite store of chunks) and
``last_run.json``. Each chunk is a document of the store: id ``path#i``, its path relative to the root, line span,
the file's content hash, mtime and size, and its text (for snippets).

Incremental and safe to kill: a file whose size and mtime are unchanged is not read; one whose text is unchanged is
not encoded; changed files are encoded in batches of about ``batch_tokens`` tokens, and each batch is one commit
(old chunks out, new ones in). A killed run leaves the index at its last commit; the next run starts from there and,
because files are taken in a fixed order and batched greedily, makes the same commits an uninterrupted run would.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from indexes import Document, FaissIndex, PlaidIndex
from modernretrieval.errors import ModernRetrievalError

from .chunking import Chunk, chunk_text
from ..heads import DEFAULT_MODELS, Head, Kind, load_head, set_document_length
from .snippets import best_lines, query_terms
from .sources import DEFAULT_MAX_FILE_BYTES, SkippedFile, SourceFile, files_under, is_code, language_of, listed, \
    read_source, walk

CONFIG, INDEX, LAST_RUN = "config.json", "index", "last_run.json"
INDEX_DIR_NAME = ".mret"
FORMAT = 1
MARGIN_TOKENS = 8  # a chunk re-tokenized alone may take a token or two more than its share of the whole file
MIN_CHUNK_TOKENS = 16  # chunk_text refuses smaller budgets


class RetrieverError(ModernRetrievalError, ValueError):
    """A user mistake (wrong folder, another model than the index's, an empty query): one clear message."""


@dataclass
class Hit:
    path: str  # relative to the indexed root
    start_line: int
    end_line: int
    score: float
    snippet: str
    snippet_line: int  # the line number of the snippet's first line
    text: str  # the whole chunk

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "start_line": self.start_line, "end_line": self.end_line,
                "score": round(self.score, 6), "snippet": self.snippet}


@dataclass
class IndexSummary:
    files: int = 0  # files in the index after the run
    chunks: int = 0  # chunks in the index after the run
    encoded_files: int = 0  # new or changed files encoded in this run
    encoded_chunks: int = 0
    encoded_tokens: int = 0
    unchanged_files: int = 0
    removed_files: int = 0  # deleted from the tree (or now skipped) since the last run
    encode_seconds: float = 0.0  # spent in the model
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count
    seconds: float = 0.0


@dataclass
class _Known:
    """What the index holds of one file."""

    content_hash: str
    mtime_ns: int
    size: int
    doc_ids: list[str] = field(default_factory=list)


@dataclass
class _Batch:
    files: list[tuple[SourceFile, str, list[Chunk]]] = field(default_factory=list)  # file, content hash, chunks
    old_ids: list[str] = field(default_factory=list)
    tokens: int = 0
    bytes: int = 0


class Retriever:
    """Index a tree and search it. ``model``/``kind``/``max_length`` are needed only to create an index; an
    existing one keeps the ones it was built with (passing others is an error: chunks and vectors would mix).

    ``max_length``: tokens per chunk, the model's [CLS]/[SEP] and prompt included; 0 (default) is the model's
    maximum (8192 for ModernBERT). ``batch_tokens``: tokens encoded per commit (what a kill can lose)."""

    def __init__(self, root: str | Path | None = None, index_dir: str | Path | None = None,
                 model: str | Path | None = None, kind: Kind | None = None, max_length: int | None = None,
                 batch_tokens: int = 65536, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
                 show_progress: bool | None = None):
        default_dir = index_dir is None
        self.index_dir = Path(root or ".") / INDEX_DIR_NAME if default_dir else Path(index_dir)
        self.config = self._read_config()
        if self.config is None or default_dir or root is not None:
            self.root = Path(root or ".").resolve()
            if not self.root.is_dir():
                raise RetrieverError(f"{root} is not a folder")
        else:
            self.root = Path(self.config["root"])
        if self.config is not None:
            if str(self.root) != self.config["root"]:
                if not default_dir:
                    raise RetrieverError(f"{self.index_dir} indexes {self.config['root']}, not {self.root}; "
                                         "choose another --index-dir")
                self.config["root"] = str(self.root)  # the tree was moved, its .mret with it
                _write_json(self.index_dir / CONFIG, self.config)
            self._check_same(model, kind, max_length)
        elif kind is not None and kind not in DEFAULT_MODELS:
            raise RetrieverError(f"kind must be dense or colbert, got {kind!r}")
        self._wanted = {"model": model, "kind": kind, "max_length": max_length}
        self.batch_tokens, self.max_file_bytes, self.show_progress = batch_tokens, max_file_bytes, show_progress
        self._model: Head | None = None
        self._index: FaissIndex | PlaidIndex | None = None
        self._budget: int | None = None

    @classmethod
    def open(cls, index_dir: str | Path, **kwargs: Any) -> "Retriever":
        """An existing index folder (for search, status, remove)."""
        if not (Path(index_dir) / CONFIG).exists():
            raise RetrieverError(f"no index at {index_dir} (run `mret index PATH` first)")
        return cls(index_dir=index_dir, **kwargs)

    @staticmethod
    def find(start: str | Path = ".") -> Path | None:
        """The nearest ``.mret`` index folder at or above ``start`` (as git finds .git)."""
        here = Path(start).resolve()
        for folder in (here, *here.parents):
            if (folder / INDEX_DIR_NAME / CONFIG).exists():
                return folder / INDEX_DIR_NAME
        return None

    # ----- configuration
    def _read_config(self) -> dict[str, Any] | None:
        path = self.index_dir / CONFIG
        if not path.exists():
            return None
        try:
            config = json.loads(path.read_text())
            config["root"], config["model"], config["kind"]  # noqa: B018 (the keys must be there)
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise RetrieverError(f"{path} is not a modernretrieval index configuration ({error})") from None
        return config

    def _check_same(self, model: str | Path | None, kind: str | None, max_length: int | None) -> None:
        config = self.config
        assert config is not None
        differs = []
        if model is not None and _model_name(model) != config["model"]:
            differs.append(f"model {config['model']}")
        if kind is not None and kind != config["kind"]:
            differs.append(f"kind {config['kind']}")
        if max_length is not None and max_length not in (config["max_length"], config["max_length_setting"]):
            differs.append(f"max length {config['max_length']}")
        if differs:
            raise RetrieverError(f"{self.index_dir} was built with {', '.join(differs)}; delete it to rebuild with "
                                 "other settings, or choose another --index-dir")

    @property
    def model(self) -> Head:
        """The head, loaded on first use (the index's own model, or the one asked for at creation)."""
        if self._model is None:
            if self.config is not None:
                self._model = load_head(self.config["model"], self.config["kind"], self.config["max_length"])
            else:
                kind = self._wanted["kind"] or "dense"
                name = self._wanted["model"] or DEFAULT_MODELS[kind]
                setting = 0 if self._wanted["max_length"] is None else self._wanted["max_length"]
                model = load_head(name, kind)
                try:
                    set_document_length(model, setting)
                except ValueError as error:  # --max-length outside the model's range: a user mistake
                    raise RetrieverError(str(error)) from None
                self._model = model
        return self._model

    def _create(self) -> None:
        model = self.model
        kind = model.kind
        config = {"format": FORMAT, "root": str(self.root), "model": _model_name(self._wanted["model"] or
                                                                                 DEFAULT_MODELS[kind]),
                  "kind": kind, "max_length": model.document_length,
                  "max_length_setting": 0 if self._wanted["max_length"] is None else self._wanted["max_length"],
                  "dim": model.dim}
        self._budget = self._chunk_budget()
        if self._budget < MIN_CHUNK_TOKENS:  # refused before anything is written: no index that every run fails on
            length = model.document_length
            raise RetrieverError(f"--max-length {length} is too small for this model: it leaves {self._budget} "
                                 f"tokens of text per chunk; use at least {length - self._budget + MIN_CHUNK_TOKENS}")
        if (self.index_dir / INDEX).exists():  # a killed first run, before config.json: start again
            shutil.rmtree(self.index_dir / INDEX)
        self.index_dir.mkdir(parents=True, exist_ok=True)
        if kind == "dense":
            FaissIndex.create(self.index_dir / INDEX, dim=model.dim, kind="flat").close()
        else:
            PlaidIndex.create(self.index_dir / INDEX, dim=model.dim, nbits=2).close()
        _write_json(self.index_dir / CONFIG, config)  # last: a folder with config.json holds a whole empty index
        self.config = config

    @property
    def vectors(self) -> FaissIndex | PlaidIndex:
        if self._index is None:
            if self.config is None:
                raise RetrieverError(f"no index at {self.index_dir} (run `mret index PATH` first)")
            cls = FaissIndex if self.config["kind"] == "dense" else PlaidIndex
            self._index = cls.open(self.index_dir / INDEX)
        return self._index

    def close(self) -> None:
        if self._index is not None:
            self._index.close()
            self._index = None

    def __enter__(self) -> "Retriever":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----- indexing
    def index(self, files: Iterable[str] | None = None) -> IndexSummary:
        """Bring the index up to date with the tree (or with exactly the files listed, relative to the root)."""
        started = time.perf_counter()
        if self.config is None:
            self._create()
        found = listed(self.root, files) if files is not None else walk(self.root, exclude=[self.index_dir])
        known = self._known_files()
        summary = IndexSummary(skipped=dict(found.skipped))
        gone = [path for path in known if path not in {f.path for f in found.files}]
        if gone:
            self.vectors.remove([i for path in gone for i in known[path].doc_ids])
        summary.removed_files = len(gone)
        todo = [f for f in found.files if f.path not in known or
                (known[f.path].mtime_ns, known[f.path].size) != (f.mtime_ns, f.size)]
        summary.unchanged_files = len(found.files) - len(todo)
        self._encode_files(todo, known, summary)
        summary.files, summary.chunks = self._counts()
        summary.seconds = time.perf_counter() - started
        _write_json(self.index_dir / LAST_RUN, {"finished": time.time(), **asdict(summary)})
        return summary

    def _encode_files(self, todo: list[SourceFile], known: dict[str, _Known], summary: IndexSummary) -> None:
        skipped, touched = Counter(summary.skipped), []
        held: list[tuple[_Batch, Any]] = []  # PLAID only: encoded batches waiting for the codec's training sample
        with _Progress(sum(f.size for f in todo), len(todo), self.show_progress) as progress:
            batch = _Batch()
            for file in todo:
                old = known.get(file.path)
                try:
                    text = read_source(file, self.max_file_bytes)
                except SkippedFile as skip:
                    skipped[skip.reason] += 1
                    if old is not None:  # indexed before, now binary, empty, too large...
                        batch.old_ids += old.doc_ids
                        summary.removed_files += 1
                    progress.advance(file.size, 1, 0)
                    continue
                content_hash = hashlib.sha256(text.encode()).hexdigest()
                if old is not None and old.content_hash == content_hash:
                    touched.append(file)
                    summary.unchanged_files += 1
                    progress.advance(file.size, 1, 0)
                    continue
                chunks = self._chunk(text, file.path)
                batch.files.append((file, content_hash, chunks))
                batch.old_ids += old.doc_ids if old is not None else []
                batch.tokens += sum(c.tokens for c in chunks)
                batch.bytes += file.size
                if batch.tokens >= self.batch_tokens:
                    self._commit(batch, held, summary, progress, final=False)
                    batch = _Batch()
            self._commit(batch, held, summary, progress, final=True)
        if touched:
            self._record_stat(touched)
        summary.skipped = dict(sorted(skipped.items(), key=lambda item: -item[1]))

    def _commit(self, batch: _Batch, held: list[tuple[_Batch, Any]], summary: IndexSummary, progress: "_Progress",
                final: bool) -> None:
        """Encode a batch and commit it: its files' old chunks out, the new ones in. A PLAID index without a codec
        holds batches back until they make a training sample (or the run ends), then commits them together."""
        texts = [c.text for _, _, chunks in batch.files for c in chunks]
        started = time.perf_counter()
        vectors = self.model.encode_documents(texts, show_progress=False) if texts else []
        summary.encode_seconds += time.perf_counter() - started
        summary.encoded_files += len(batch.files)
        summary.encoded_chunks += len(texts)
        summary.encoded_tokens += batch.tokens
        progress.advance(batch.bytes, len(batch.files), batch.tokens)
        index = self.vectors
        if isinstance(index, PlaidIndex) and index.codec is None:
            held.append((batch, vectors))
            held_tokens = sum(len(a) for _, arrays in held for a in arrays)
            if not final and held_tokens < index.settings["sample_tokens"]:
                return
            batch, vectors = _merge_held(held)
            held.clear()
        ids, documents = _documents(batch)
        if not ids and not batch.old_ids:
            return
        with index.transaction():
            if batch.old_ids:
                index.remove(batch.old_ids)
            if ids:
                if isinstance(index, PlaidIndex):
                    # size the centroids for the whole run: this sample's tokens per byte times the bytes to index
                    expected = int(batch.tokens * max(1.0, progress.total_bytes / max(1, batch.bytes)))
                    index.add(ids, vectors, documents, expected_tokens=expected)
                else:
                    index.add(ids, np.asarray(vectors), documents)

    def _chunk(self, text: str, path: str) -> list[Chunk]:
        if self._budget is None:  # the model is loaded only when a file needs encoding (not on a no-change run)
            self._budget = self._chunk_budget()
        return chunk_text(text, self.model.tokenizer.backend, self._budget, is_code(path))

    def _chunk_budget(self) -> int:
        """Tokens of file text per chunk: the model's length less its special tokens, prompt and a margin."""
        model = self.model
        return model.document_length - model.document_overhead - MARGIN_TOKENS

    def _known_files(self) -> dict[str, _Known]:
        known: dict[str, _Known] = {}
        rows = self.vectors.store.db.execute(
            "SELECT source, content_hash, json_extract(metadata, '$.mtime_ns'), json_extract(metadata, '$.size'), "
            "doc_id FROM documents ORDER BY source, json_extract(metadata, '$.chunk')")
        for source, content_hash, mtime_ns, size, doc_id in rows:
            known.setdefault(source, _Known(content_hash, mtime_ns, size)).doc_ids.append(doc_id)
        return known

    def _record_stat(self, files: list[SourceFile]) -> None:
        """Files touched but not changed: remember their new mtime so that the next run does not read them."""
        index = self.vectors
        with index.transaction(), index.store.transaction() as db:
            db.executemany("UPDATE documents SET metadata = json_set(metadata, '$.mtime_ns', ?, '$.size', ?) "
                           "WHERE source = ?", [(f.mtime_ns, f.size, f.path) for f in files])

    def _counts(self) -> tuple[int, int]:
        files, chunks = self.vectors.store.db.execute(
            "SELECT count(DISTINCT source), count(*) FROM documents").fetchone()
        return files, chunks

    # ----- searching
    def search(self, query: str, k: int = 10, path_glob: str | Sequence[str] | None = None,
               file_type: str | Sequence[str] | None = None) -> list[Hit]:
        """The ``k`` best chunks for ``query``, best first. ``path_glob``: gitignore-style patterns over paths
        relative to the root ("*.py", "src/**/test_*.py"); ``file_type``: languages or extensions ("python", "md")."""
        if not isinstance(query, str) or not query.strip():
            raise RetrieverError("the query is empty")
        if k < 1:
            raise RetrieverError(f"k must be at least 1, got {k}")
        index = self.vectors
        allowed = self._allowed(path_glob, file_type)
        if allowed is not None and not allowed:
            return []
        found = index.search(self.model.encode_queries([query]), k=k, filter=allowed)[0]
        documents = index.documents([doc_id for doc_id, _ in found])
        terms = query_terms(query)
        hits = []
        for (_, score), doc in zip(found, documents):
            if doc is None:  # removed between the search and the lookup
                continue
            offset, lines = best_lines(doc.text or "", terms)
            hits.append(Hit(doc.source or "", doc.start_line or 1, doc.end_line or 1, float(score), "\n".join(lines),
                            (doc.start_line or 1) + offset, doc.text or ""))
        return hits

    def _allowed(self, path_glob: str | Sequence[str] | None, file_type: str | Sequence[str] | None) -> list[str] | None:
        if not path_glob and not file_type:
            return None
        import pathspec

        globs = [path_glob] if isinstance(path_glob, str) else list(path_glob or [])
        types = {t.lower().lstrip(".") for t in ([file_type] if isinstance(file_type, str) else file_type or [])}
        spec = pathspec.GitIgnoreSpec.from_lines(globs) if globs else None
        allowed = []
        for doc_id, source in self.vectors.store.db.execute("SELECT doc_id, source FROM documents"):
            if spec is not None and not spec.match_file(source):
                continue
            if types and language_of(source) not in types and os.path.splitext(source)[1].lstrip(".").lower() not in types:
                continue
            allowed.append(doc_id)
        return allowed

    # ----- removing and describing
    def remove(self, path: str | Path) -> tuple[int, int]:
        """Drop a file, or everything under a folder, from the index: (files, chunks) removed. ``path`` is relative
        to the root, or absolute under it. The next ``index`` takes it back unless it is ignored (.mretignore)."""
        relative = self._relative(path)
        known = self._known_files()
        paths = list(files_under(known, relative))
        if not paths:
            raise RetrieverError(f"nothing indexed at {relative or '.'}")
        ids = [i for p in paths for i in known[p].doc_ids]
        self.vectors.remove(ids)
        return len(paths), len(ids)

    def _relative(self, path: str | Path) -> str:
        candidate = Path(path)
        absolute = (candidate if candidate.is_absolute() else Path.cwd() / candidate).resolve()
        if absolute.is_relative_to(self.root):
            relative = absolute.relative_to(self.root).as_posix()
            return "" if relative == "." else relative  # (not .strip("."): ".github" stays ".github")
        if not candidate.is_absolute():  # already relative to the root
            return candidate.as_posix().strip("/")
        raise RetrieverError(f"{path} is not under the indexed root {self.root}")

    def status(self) -> dict[str, Any]:
        """What is indexed: root, model, counts by language, tokens, size on disk, the last run."""
        config = self.config
        if config is None:
            raise RetrieverError(f"no index at {self.index_dir} (run `mret index PATH` first)")
        db = self.vectors.store.db
        files, chunks = self._counts()
        tokens = db.execute("SELECT coalesce(sum(json_extract(metadata, '$.tokens')), 0) FROM documents").fetchone()[0]
        languages = Counter()
        for source, in db.execute("SELECT DISTINCT source FROM documents"):
            languages[language_of(source)] += 1
        size = sum(p.stat().st_size for p in self.index_dir.rglob("*") if p.is_file())
        last = None
        if (self.index_dir / LAST_RUN).exists():
            last = json.loads((self.index_dir / LAST_RUN).read_text())
        return {"root": config["root"], "index_dir": str(self.index_dir.resolve()), "model": config["model"],
                "kind": config["kind"], "max_length": config["max_length"], "files": files, "chunks": chunks,
                "tokens": tokens, "languages": dict(languages.most_common()), "bytes_on_disk": size,
                "index": self.vectors.stats(), "last_run": last}


def _merge_held(held: list[tuple[_Batch, Any]]) -> tuple[_Batch, list]:
    merged, vectors = _Batch(), []
    for batch, arrays in held:
        merged.files += batch.files
        merged.old_ids += batch.old_ids
        merged.tokens += batch.tokens
        merged.bytes += batch.bytes
        vectors += list(arrays)
    return merged, vectors


def _documents(batch: _Batch) -> tuple[list[str], list[Document]]:
    ids, documents = [], []
    for file, content_hash, chunks in batch.files:
        for i, chunk in enumerate(chunks):
            doc_id = f"{file.path}#{i}"
            ids.append(doc_id)
            documents.append(Document(
                doc_id, source=file.path, start_line=chunk.start_line, end_line=chunk.end_line,
                content_hash=content_hash, text=chunk.text,
                metadata={"lang": language_of(file.path), "chunk": i, "chunks": len(chunks), "tokens": chunk.tokens,
                          "mtime_ns": file.mtime_ns, "size": file.size}))
    return ids, documents


def _model_name(model: str | Path) -> str:
    """A local folder by its absolute path (so that the index finds it from anywhere), a hub id as is."""
    local = Path(model).expanduser()
    return str(local.resolve()) if local.is_dir() else str(model)


def _write_json(path: Path, value: Any) -> None:
    """Whole or not at all (written beside, fsynced, renamed)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(value, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class _Progress:
    """A rich progress bar over the bytes to index, with files and tokens done and the time left."""

    def __init__(self, total_bytes: int, total_files: int, show: bool | None):
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        err = Console(stderr=True)

        self.total_files, self.total_bytes = total_files, total_bytes
        self.files = self.tokens = 0
        self.progress = Progress(
            TextColumn("indexing"), BarColumn(), TextColumn("{task.fields[files]}"),
            TextColumn("{task.fields[tokens]} tokens"), TimeRemainingColumn(), console=err,
            disable=(not err.is_terminal) if show is None else not show, transient=False)
        self.task = self.progress.add_task("indexing", total=max(total_bytes, 1), files=self._files(), tokens="0")

    def _files(self) -> str:
        return f"{self.files:,}/{self.total_files:,} files"

    def advance(self, nbytes: int, files: int, tokens: int) -> None:
        self.files += files
        self.tokens += tokens
        self.progress.update(self.task, advance=nbytes, files=self._files(), tokens=f"{self.tokens:,}")

    def __enter__(self) -> "_Progress":
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()
