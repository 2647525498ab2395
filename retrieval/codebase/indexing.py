"""One indexing run: bring an index up to date with a tree.

    files (walk) -> text (read_source) -> chunks (chunk_text) -> vectors (the head) -> index + store

Lexical first, vectors as they come: the run first reads, chunks and commits the texts of every new and changed file
(their old chunks out in the same commit), marked "pending": the lexical side of the whole tree is searchable after
this pass, which costs no model call. Then the pending chunks are encoded, a file's chunks together, in batches of
about ``batch_tokens`` tokens, each batch one commit (``add_stream(..., commit="each")``; a PLAID index without a
codec holds batches back until they make its training sample). The next batch is encoded in a worker thread while
the current one commits (``encoding.ahead``; only the model call runs there): the same commits, in the same order. A search in between ranks
the encoded chunks by both sides and the pending ones lexically (hybrid mode).

Incremental and safe to kill: a file whose size and mtime are unchanged is not read; one whose text is unchanged is
not chunked again; a killed run leaves the index at its last commit, and the next run encodes whatever is still
pending, whichever run wrote it.

Each chunk is a document of the store: id ``path#i``, its path relative to the root, line span, the file's content
hash, and metadata (language, chunk number and count, tokens, the file's mtime and size), and its text (snippets).
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from indexes import Batch, Document, FaissIndex, PlaidIndex
from modernretrieval.files import atomic_write_json

from ..encoding import Encoded, ahead, encode_texts
from ..heads import Head
from .chunking import Chunk, chunk_text
from .config import LAST_RUN, RetrieverError
from .sources import SkippedFile, SourceFile, is_code, language_of, listed, read_source, walk
from .symbols import Symbol, definitions, rows, symbols_in

MARGIN_TOKENS = 8  # a chunk re-tokenized alone may take a token or two more than its share of the whole file
MIN_CHUNK_TOKENS = 16  # chunk_text refuses smaller budgets
TEXT_BATCH_BYTES = 4 << 20  # file bytes per commit of the texts (the lexical side)
PENDING = "pending"  # metadata of a chunk whose text is committed and whose vector is not yet
PENDING_FILTER = (f"json_extract(metadata, '$.{PENDING}') = 1", ())


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
    overlap: bool = True  # the next batch is encoded while the current one commits (encoding.ahead)
    # the documents' encoder when it is not the head in this process (``mret index --ray``: a pool of Ray actors,
    # retrieval.distributed.RayEncoder); it must give the rows ``encode_texts`` gives with the index's head
    encode: Callable[[Sequence[str]], Encoded] | None = None
    # called just before each batch is encoded (maybe in encoding.ahead's worker thread): what it raises ends the run
    # between two commits (``TreeService.index`` stops a run this way)
    before_batch: Callable[[], None] | None = None


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
    """Index ``root`` (or exactly ``files``, relative to it) into ``vectors``: first the texts of new and changed
    files (the lexical side: searchable at once), then their vectors. ``head`` gives the model when a file needs
    chunking or encoding: a run where nothing changed never loads it."""
    started = time.perf_counter()
    found = listed(root, files) if files is not None else walk(root, exclude=[index_dir])
    known = vectors.store.files()
    if files is not None and not found.files and known:  # a list of nothing would empty the index: a mistake
        count = sum(found.skipped.values())
        what = (f"none of the {count} paths listed is a file to index under {root} (paths are relative to PATH, "
                "or absolute)") if count else "the file list is empty"
        raise RetrieverError(f"{what}; the index was left as it was (`mret remove` removes files)")
    summary = IndexSummary(skipped=dict(found.skipped), lister=found.lister)
    present = {f.path for f in found.files}
    gone = [path for path in known if path not in present]
    if gone:
        with vectors.transaction():
            drop_chunks(vectors, [i for path in gone for i in known[path].doc_ids])
    summary.removed_files = len(gone)
    todo = [f for f in found.files if f.path not in known or f.size > settings.max_file_bytes or  # (a lowered limit)
            (known[f.path].metadata.get("mtime_ns"), known[f.path].metadata.get("size")) != (f.mtime_ns, f.size)]
    summary.unchanged_files = len(found.files) - len(todo)
    run = _Run(vectors, head, settings, summary)
    run.write_texts(todo, known)
    run.encode_pending()
    summary.files, summary.chunks = vectors.store.count_sources(), len(vectors.store)
    summary.seconds = time.perf_counter() - started
    atomic_write_json(index_dir / LAST_RUN, {"finished": time.time(), **asdict(summary)})
    return summary


def pending_chunks(vectors: FaissIndex | PlaidIndex) -> int:
    """Chunks whose text is indexed but whose vector is not yet (a run in progress, or killed before encoding)."""
    with vectors.store.read_transaction():  # every chunk has a document; the encoded ones have a vector too
        return max(0, len(vectors.store) - len(vectors))


def drop_chunks(vectors: FaissIndex | PlaidIndex, ids: list[str]) -> None:
    """Remove chunks inside the caller's index transaction: encoded ones from the index (vectors, documents and
    lexical rows), pending ones (text only) from the store."""
    encoded = [i for i in ids if i in vectors]
    if encoded:
        vectors.remove(encoded)
    done = set(encoded)
    waiting = [i for i in ids if i not in done]
    if waiting:
        vectors.store.delete(waiting)


class _Run:
    """The files to (re-)index: their texts as one stream of commits, then their vectors as another."""

    def __init__(self, vectors: FaissIndex | PlaidIndex, head: Callable[[], Head], settings: IndexSettings,
                 summary: IndexSummary):
        self.vectors, self.head, self.settings, self.summary = vectors, head, settings, summary
        self.budget: int | None = None

    def write_texts(self, todo: list[SourceFile], known: dict) -> None:
        """New and changed files read, chunked and committed as pending chunks (their old chunks out in the same
        commit), ``TEXT_BATCH_BYTES`` of files per commit: the lexical side of the whole tree lands first."""
        summary = self.summary
        skipped, touched = Counter(summary.skipped), []
        with _Progress("reading", sum(f.size for f in todo), len(todo), self.settings.show_progress) as progress:
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
                progress.advance(file.size, 1, 0)
                if batch.bytes >= TEXT_BATCH_BYTES:
                    self._commit_texts(batch)
                    batch = _Batch()
            if batch.files or batch.old_ids:
                self._commit_texts(batch)
        if touched:  # touched but not changed: remember the new mtime so that the next run does not read them
            with self.vectors.transaction():  # under the index's write lock, as every change
                self.vectors.store.set_file_metadata({f.path: {"mtime_ns": f.mtime_ns, "size": f.size}
                                                      for f in touched})
        summary.skipped = dict(sorted(skipped.items(), key=lambda item: -item[1]))

    def _commit_texts(self, batch: _Batch) -> None:
        _, documents = _documents(batch)
        for document in documents:
            document.metadata[PENDING] = True
        with self.vectors.transaction():
            drop_chunks(self.vectors, batch.old_ids)
            self.vectors.store.put(documents)

    def encode_pending(self) -> None:
        """Vectors for every pending chunk (this run's, and any a killed run left), a file's chunks together,
        about ``batch_tokens`` tokens per commit."""
        store = self.vectors.store
        if not pending_chunks(self.vectors):  # a no-change run: one count, not a read of every chunk's metadata
            return
        waiting = [record for record in store.files().values() if record.metadata.get(PENDING)]
        if not waiting:
            return
        total = sum(len(r.doc_ids) for r in waiting)
        tokens_after = int(store.metadata_sum("tokens"))  # what the index holds once every pending chunk is in

        def batches() -> Iterator[list[Document]]:  # read here, in the committing thread
            documents: list[Document] = []
            for number, record in enumerate(waiting):
                documents += [d for d in store.get(list(record.doc_ids)) if d is not None]
                tokens = sum(int(d.metadata.get("tokens", 0)) for d in documents)
                if number + 1 == len(waiting) or tokens >= self.settings.batch_tokens:
                    yield documents
                    documents = []

        with _Progress("encoding", total, len(waiting), self.settings.show_progress) as progress:
            encoded = ahead(self._vectors, batches()) if self.settings.overlap else \
                ((documents, self._vectors(documents)) for documents in batches())
            self.vectors.add_stream((self._batch(documents, vectors, seconds, progress)
                                     for documents, (vectors, seconds) in encoded),
                                    expected_tokens=tokens_after, commit="each")

    def _vectors(self, documents: list[Document]) -> tuple[list, float]:
        """The chunks' vectors and the seconds they took: the model alone, which may run in a worker thread
        (``encoding.ahead``) while the previous batch commits; it reads and writes nothing else."""
        started = time.perf_counter()
        encode = self.settings.encode or (lambda texts: encode_texts(self.head(), texts, is_query=False))
        if documents and self.settings.before_batch is not None:
            self.settings.before_batch()
        vectors = encode([d.text or "" for d in documents]).rows if documents else []
        return vectors, time.perf_counter() - started

    def _batch(self, documents: list[Document], vectors: list, seconds: float, progress: "_Progress") -> Batch:
        """Encoded pending chunks as one change of the index: their vectors in, the pending mark off."""
        summary = self.summary
        summary.encode_seconds += seconds
        tokens = sum(int(d.metadata.get("tokens", 0)) for d in documents)
        # another writer (a watcher, a second `mret index`) may have replaced or encoded some of these chunks while
        # they were being encoded: only the ones still pending with the same text are committed
        current = {d.doc_id: d for d in self.vectors.store.get([d.doc_id for d in documents]) if d is not None}
        keep = [i for i, d in enumerate(documents) if (now := current.get(d.doc_id)) is not None
                and now.metadata.get(PENDING) and now.text == d.text and now.content_hash == d.content_hash]
        if len(keep) < len(documents):
            documents, vectors = [documents[i] for i in keep], [vectors[i] for i in keep]
        for document in documents:
            document.metadata.pop(PENDING, None)
        files = len({d.source for d in documents})
        summary.encoded_files += files
        summary.encoded_chunks += len(documents)
        summary.encoded_tokens += tokens
        progress.advance(len(documents), files, tokens)
        return Batch([d.doc_id for d in documents], vectors, documents)

    def _chunk(self, text: str, path: str) -> list[Chunk]:
        if self.budget is None:  # the model is loaded only when a file needs chunking (not on a no-change run)
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

    def __init__(self, label: str, total: int, total_files: int, show: bool | None):
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        console = Console(stderr=True, emoji=False)  # a path may hold ":fire:"
        self.total_files = total_files
        self.files = self.tokens = 0
        self.progress = Progress(
            TextColumn(label), BarColumn(), TextColumn("{task.fields[files]}"),
            TextColumn("{task.fields[tokens]} tokens"), TimeRemainingColumn(), console=console,
            disable=(not console.is_terminal) if show is None else not show, transient=False)
        self.task = self.progress.add_task(label, total=max(total, 1), files=self._files(), tokens="0")

    def _files(self) -> str:
        return f"{self.files:,}/{self.total_files:,} files"

    def advance(self, amount: int, files: int, tokens: int) -> None:
        """``amount``: of the bar's total (bytes read, or chunks encoded)."""
        self.files += files
        self.tokens += tokens
        self.progress.update(self.task, advance=amount, files=self._files(), tokens=f"{self.tokens:,}")

    def __enter__(self) -> "_Progress":
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()
