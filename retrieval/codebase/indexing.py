"""One indexing run: bring an index up to date with a tree.

    files (walk) -> text (read_source) -> chunks (chunk_text) -> vectors (the head) -> index + store

Incremental and safe to kill: a file whose size and mtime are unchanged is not read; one whose text is unchanged is
not encoded; changed files are encoded in batches of about ``batch_tokens`` tokens, and each batch is one commit
(old chunks out, new ones in: ``add_stream(..., commit="each")``; a PLAID index without a codec holds batches back
until they make its training sample). A killed run leaves the index at its last commit; the next run starts from
there and, because files are taken in a fixed order and batched greedily, makes the same commits an uninterrupted
run would.

Each chunk is a document of the store: id ``path#i``, its path relative to the root, line span, the file's content
hash, and metadata (language, chunk number and count, tokens, the file's mtime and size), and its text (snippets).
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from indexes import Batch, Document, FaissIndex, PlaidIndex
from modernretrieval.files import atomic_write_json

from ..encoding import encode_texts
from ..heads import Head
from .chunking import Chunk, chunk_text
from .config import LAST_RUN
from .sources import SkippedFile, SourceFile, is_code, language_of, listed, read_source, walk
from .symbols import Symbol, definitions, rows, symbols_in

MARGIN_TOKENS = 8  # a chunk re-tokenized alone may take a token or two more than its share of the whole file
MIN_CHUNK_TOKENS = 16  # chunk_text refuses smaller budgets


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
    lister: str = "walk"  # where the file list came from: "git" (git ls-files), "walk" (the tree), "list" (given)


@dataclass
class IndexSettings:
    """How a run reads and batches (not part of the index: they may change from run to run)."""

    batch_tokens: int = 65536  # tokens encoded per commit (what a kill can lose)
    max_file_bytes: int = 1 << 20
    show_progress: bool | None = None  # None: on a terminal only


def chunk_budget(head: Head) -> int:
    """Tokens of file text per chunk: the model's length less its special tokens, prompt and a margin."""
    return head.document_length - head.document_overhead - MARGIN_TOKENS


@dataclass
class _Batch:
    # file, content hash, chunks, the file's definitions (symbols.py; none for prose)
    files: list[tuple[SourceFile, str, list[Chunk], list[Symbol]]] = field(default_factory=list)
    old_ids: list[str] = field(default_factory=list)
    tokens: int = 0
    bytes: int = 0


def run_index(root: Path, index_dir: Path, vectors: FaissIndex | PlaidIndex, head: Callable[[], Head],
              settings: IndexSettings, files: Iterable[str] | None = None) -> IndexSummary:
    """Index ``root`` (or exactly ``files``, relative to it) into ``vectors``. ``head`` gives the model when a file
    needs encoding: a run where nothing changed never loads it."""
    started = time.perf_counter()
    found = listed(root, files) if files is not None else walk(root, exclude=[index_dir])
    known = vectors.store.files()
    summary = IndexSummary(skipped=dict(found.skipped), lister=found.lister)
    present = {f.path for f in found.files}
    gone = [path for path in known if path not in present]
    if gone:
        vectors.remove([i for path in gone for i in known[path].doc_ids])
    summary.removed_files = len(gone)
    todo = [f for f in found.files if f.path not in known or
            (known[f.path].metadata.get("mtime_ns"), known[f.path].metadata.get("size")) != (f.mtime_ns, f.size)]
    summary.unchanged_files = len(found.files) - len(todo)
    _Run(vectors, head, settings, summary).index(todo, known)
    summary.files, summary.chunks = vectors.store.count_sources(), len(vectors.store)
    summary.seconds = time.perf_counter() - started
    atomic_write_json(index_dir / LAST_RUN, {"finished": time.time(), **asdict(summary)})
    return summary


class _Run:
    """The files to (re-)encode, as a stream of commits."""

    def __init__(self, vectors: FaissIndex | PlaidIndex, head: Callable[[], Head], settings: IndexSettings,
                 summary: IndexSummary):
        self.vectors, self.head, self.settings, self.summary = vectors, head, settings, summary
        self.budget: int | None = None
        self.committed_tokens = self.committed_bytes = 0  # what the batches handed to the index hold so far

    def index(self, todo: list[SourceFile], known: dict) -> None:
        summary = self.summary
        skipped, touched = Counter(summary.skipped), []
        with _Progress(sum(f.size for f in todo), len(todo), self.settings.show_progress) as progress:

            def batches() -> Iterator[_Batch]:
                batch = _Batch()
                for file in todo:
                    old = known.get(file.path)
                    try:
                        text = read_source(file, self.settings.max_file_bytes)
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
                    symbols = definitions(file.path, text) if is_code(file.path) else []
                    batch.files.append((file, content_hash, chunks, symbols))
                    batch.old_ids += old.doc_ids if old is not None else []
                    batch.tokens += sum(c.tokens for c in chunks)
                    batch.bytes += file.size
                    if batch.tokens >= self.settings.batch_tokens:
                        yield batch
                        batch = _Batch()
                if batch.files or batch.old_ids:
                    yield batch

            def expected_tokens() -> int:
                """The whole run's tokens, from the sample's tokens per byte (it sizes PLAID's centroids)."""
                ratio = progress.total_bytes / max(1, self.committed_bytes)
                return int(self.committed_tokens * max(1.0, ratio))

            changes = (self._encoded(batch, progress) for batch in batches())
            self.vectors.add_stream(changes, expected_tokens=expected_tokens, commit="each")
        if touched:  # touched but not changed: remember the new mtime so that the next run does not read them
            with self.vectors.transaction():  # under the index's write lock, as every change
                self.vectors.store.set_file_metadata({f.path: {"mtime_ns": f.mtime_ns, "size": f.size}
                                                      for f in touched})
        summary.skipped = dict(sorted(skipped.items(), key=lambda item: -item[1]))

    def _encoded(self, batch: _Batch, progress: "_Progress") -> Batch:
        """A batch of files as one change of the index: their old chunks out, the new ones in."""
        ids, documents = _documents(batch)
        texts = [d.text or "" for d in documents]
        started = time.perf_counter()
        vectors = encode_texts(self.head(), texts, is_query=False).rows if texts else []
        summary = self.summary
        summary.encode_seconds += time.perf_counter() - started
        summary.encoded_files += len(batch.files)
        summary.encoded_chunks += len(texts)
        summary.encoded_tokens += batch.tokens
        self.committed_tokens += batch.tokens
        self.committed_bytes += batch.bytes
        progress.advance(batch.bytes, len(batch.files), batch.tokens)
        return Batch(ids, vectors, documents, remove=batch.old_ids)

    def _chunk(self, text: str, path: str) -> list[Chunk]:
        if self.budget is None:  # the model is loaded only when a file needs encoding (not on a no-change run)
            self.budget = chunk_budget(self.head())
        return chunk_text(text, self.head().tokenizer.backend, self.budget, is_code(path))


def _documents(batch: _Batch) -> tuple[list[str], list[Document]]:
    ids, documents = [], []
    for file, content_hash, chunks, symbols in batch.files:
        for i, chunk in enumerate(chunks):
            doc_id = f"{file.path}#{i}"
            ids.append(doc_id)
            metadata = {"lang": language_of(file.path), "chunk": i, "chunks": len(chunks), "tokens": chunk.tokens,
                        "mtime_ns": file.mtime_ns, "size": file.size}
            if is_code(file.path):  # the definitions that start in the chunk: [[name, kind, start, end, parent]]
                metadata["symbols"] = rows(symbols_in(symbols, chunk.start_line, chunk.end_line))
            documents.append(Document(
                doc_id, source=file.path, start_line=chunk.start_line, end_line=chunk.end_line,
                content_hash=content_hash, text=chunk.text, metadata=metadata))
    return ids, documents


class _Progress:
    """A rich progress bar over the bytes to index, with files and tokens done and the time left."""

    def __init__(self, total_bytes: int, total_files: int, show: bool | None):
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        console = Console(stderr=True)
        self.total_files, self.total_bytes = total_files, total_bytes
        self.files = self.tokens = 0
        self.progress = Progress(
            TextColumn("indexing"), BarColumn(), TextColumn("{task.fields[files]}"),
            TextColumn("{task.fields[tokens]} tokens"), TimeRemainingColumn(), console=console,
            disable=(not console.is_terminal) if show is None else not show, transient=False)
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
