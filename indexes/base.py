"""What every index shares: the folder, its generations and commits, ids, filters, the write lock, and what readers see.

An index folder holds ``store.sqlite`` (documents, metadata, and the index's own tables) and ``files/`` (immutable
vector files). Vectors live in *segments*: each ``add`` writes one new segment; a removal only deletes rows from the
database (a tombstone: the vectors stay on disk but are never returned) until ``compact`` rewrites the segments.
Every change is one commit: new files are written and fsynced first, then a single SQLite transaction records them,
the rows, the documents and the new generation number. A process killed at any moment therefore leaves the index in
the state of its last commit; files written for a commit that never happened are deleted by the next writer.

Rows are global, stable integers (one per document); segments map their local positions to rows. One writer at a
time holds ``write.lock``; readers see a new commit at their next search.

Threads. One index object may be read from many threads while commits land (from this object, in another thread,
or from another object or process): what a committed generation holds is built once into a ``Snapshot``, which
never changes and is published by one assignment; every read takes the latest snapshot once, at its start, in the
same SQLite read transaction as its filter, so it sees one whole generation. Each thread has its own SQLite
connection (see store.py). A transaction belongs to the thread that opened it: its pending changes live in a
``Pending`` object passed explicitly to every step of the write, invisible to readers until the commit publishes
the next snapshot; writers in two threads exclude each other on ``write.lock`` as two processes do.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from filelock import FileLock, Timeout

from modernretrieval.files import folder_bytes, fsync_dir

from . import files, lexical
from .errors import IndexBusyError, IndexCorruptError, IndexInputError
from .files import FileEntry
from .state import Batch, ExpectedTokens, Pending, Segment, Snapshot
from .store import Document, DocumentStore, Filter, delete_documents, is_sql_filter, write_documents

STORE, FILES, LOCK = "store.sqlite", "files", "write.lock"
INDEX_SCHEMA = """
CREATE TABLE IF NOT EXISTS segments (segment INTEGER PRIMARY KEY, files TEXT NOT NULL, info TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rows (row INTEGER PRIMARY KEY, doc_id TEXT NOT NULL UNIQUE, segment INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS retired (name TEXT PRIMARY KEY, generation INTEGER NOT NULL);
"""
MAX_SEGMENTS = 16  # more than this after a commit: the small ones are merged
LOAD_ATTEMPTS = 5  # a reader racing a fast writer may find its generation's files collected: it reads again
log = logging.getLogger("mret.indexes")
Hits = list[tuple[str, float]]


def _holds_an_index(store_path: Path) -> bool:
    """Whether the document store at ``store_path`` has an index's meta (its kind), which ``_create`` commits in one
    transaction with the index tables."""
    store = DocumentStore(store_path)
    try:
        return store.get_meta("kind") is not None
    finally:
        store.close()


class VectorIndex:
    """Base of FaissIndex and PlaidIndex: subclasses say how a segment is written, opened, merged and searched."""

    kind: ClassVar[str]

    def __init__(self, path: Path, lock_timeout: float):
        self.path = path
        self.files_dir = path / FILES
        self.store = DocumentStore(path / STORE)
        # thread_local: each thread takes the lock through its own descriptor, so writers in two threads of this
        # process exclude each other exactly as two processes do
        self._lock = FileLock(str(path / LOCK), thread_local=True)
        self.lock_timeout = lock_timeout
        self._local = threading.local()  # per thread: .pending (its open transaction), .seen (see _view)
        self._load_lock = threading.Lock()  # one thread builds a snapshot at a time; the others then reuse it
        self._state: Snapshot | None = None
        try:
            self._view(None)
        except BaseException:
            self.store.close()
            raise

    # ----- creating and opening
    @classmethod
    def _create(cls, path: str | Path, settings: dict[str, Any], lock_timeout: float = 60.0):
        path = Path(path)
        if (path / STORE).exists() and _holds_an_index(path / STORE):
            raise IndexInputError(f"{path} already holds an index; open it with {cls.__name__}.open")
        # (a store without the index's meta is a create killed before its one transaction: it is finished here;
        # the schema and the meta rows are written idempotently)
        (path / FILES).mkdir(parents=True, exist_ok=True)
        store = DocumentStore(path / STORE)
        with store.transaction() as db:
            for statement in INDEX_SCHEMA.strip().split(";"):
                if statement.strip():
                    db.execute(statement)
            for key, value in {"kind": cls.kind, "format": 1, "settings": settings, "generation": 0, "next_row": 0,
                               "next_segment": 0, "shared_files": {}}.items():
                db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))
        store.close()
        fsync_dir(path)
        return cls(path, lock_timeout)

    @classmethod
    def open(cls, path: str | Path, lock_timeout: float = 60.0):
        """Open an existing index (vectors are memory-mapped, not read into RAM)."""
        path = Path(path)
        if not path.is_dir():
            raise IndexInputError(f"no index at {path}: the folder does not exist")
        if not (path / STORE).exists() or (path / STORE).stat().st_size == 0:
            raise IndexCorruptError(f"{path} is not an index folder (it has no {STORE}, or an empty one)")
        return cls(path, lock_timeout)

    def close(self) -> None:
        self.store.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ----- the committed state
    @property
    def generation(self) -> int:
        """The generation of the latest snapshot this object has seen (every search, len, stats refreshes it)."""
        return self._snapshot().generation

    @property
    def settings(self) -> dict[str, Any]:
        return self._snapshot().settings

    @property
    def shared_files(self) -> dict[str, FileEntry]:
        return self._snapshot().shared_files

    @property
    def dead_rows(self) -> int:
        return self._snapshot().dead_rows

    @property
    def _segments(self) -> dict[int, Segment]:
        return self._snapshot().segments

    def _snapshot(self) -> Snapshot:
        """The latest snapshot published (no database read)."""
        state = self._state
        assert state is not None
        return state

    def _current(self) -> Pending | None:
        """This thread's open transaction, if any."""
        return getattr(self._local, "pending", None)

    def refresh(self) -> None:
        """See the latest commit (every read does this by itself)."""
        self._view(None)

    def _view(self, filter: Filter) -> tuple[Snapshot, np.ndarray | None]:
        """The latest committed snapshot and the rows ``filter`` allows in it (None: all), of the same generation: a
        SQL filter is read in the same SQLite read transaction as the generation. Inside this thread's transaction:
        the snapshot it started from (its own changes are not visible before the commit, as for every reader)."""
        pending = self._current()
        if pending is not None:
            return pending.base, self._allowed_rows(pending.base, filter)
        version = self.store.data_version()  # before the generation is read: a commit in between only costs a read
        snapshot = self._state
        if not is_sql_filter(filter) and snapshot is not None and getattr(self._local, "seen", None) == (
                version, snapshot.generation):
            # no other connection has committed since this thread saw that generation (nor has this thread's, or
            # the snapshot published would be newer): no read transaction needed, nor a SQL query
            return snapshot, self._allowed_rows(snapshot, filter)
        for attempt in range(LOAD_ATTEMPTS):
            generation = None
            try:
                with self.store.read_transaction():
                    generation = self.store.get_meta("generation")
                    snapshot = self._state
                    if snapshot is None or snapshot.generation != generation:
                        snapshot = self._load()
                    self._local.seen = (version, generation)
                    return snapshot, self._allowed_rows(snapshot, filter)
            except IndexCorruptError:
                moved_on = generation is not None and self.store.get_meta("generation") != generation
                if attempt == LOAD_ATTEMPTS - 1 or not moved_on:
                    raise  # nothing moved on: the folder itself is damaged
        raise AssertionError("unreachable")

    def _load(self, opened: dict[int, Segment] | None = None) -> Snapshot:
        """Build the snapshot of the committed state (read in one read transaction: this thread's open one, or its
        own), reusing what is open already: segments never change, nor do the shared files unless they were replaced;
        ``opened``: segments a commit of this object has just written. Published unless a newer one is already."""
        with self.store.read_transaction() as db:
            try:
                meta = {k: json.loads(v) for k, v in db.execute("SELECT key, value FROM meta")}
                segments = db.execute("SELECT segment, files, info FROM segments ORDER BY segment").fetchall()
                rows = db.execute("SELECT row, doc_id FROM rows").fetchall()
            except Exception as error:
                raise IndexCorruptError(f"{self.path / STORE} is not an index database ({error})") from None
            if meta.get("kind") != self.kind:
                raise IndexCorruptError(f"{self.path} is a {meta.get('kind')!r} index, not {self.kind!r}")
            with self._load_lock:
                current = self._state
                if current is not None and current.generation == meta["generation"]:
                    return current
                snapshot = self._build(meta, segments, rows, current, opened or {})
                if current is None or snapshot.generation > current.generation:
                    self._state = snapshot
                return snapshot

    def _build(self, meta: dict, segments: list, rows: list, current: Snapshot | None,
               opened: dict[int, Segment]) -> Snapshot:
        settings: dict[str, Any] = meta["settings"]
        next_row = meta["next_row"]
        shared_files = {k: FileEntry.from_json(v) for k, v in meta["shared_files"].items()}
        if current is not None and current.shared_files == shared_files:
            shared = current.shared
        else:
            shared = self._open_shared(shared_files, settings)
        known = {**(current.segments if current is not None else {}), **opened}
        built: dict[int, Segment] = {}
        for segment_id, segment_files, info in segments:
            if segment_id in known:
                built[segment_id] = known[segment_id]
                continue
            entries = {k: FileEntry.from_json(v) for k, v in json.loads(segment_files).items()}
            segment_rows = files.open_array(self.files_dir, entries["rows"])
            if segment_rows.ndim != 1 or (len(segment_rows) and not 0 <= segment_rows.min() <= segment_rows.max() < next_row):
                raise IndexCorruptError(f"{self.files_dir / entries['rows'].name} holds rows outside the index")
            segment = Segment(segment_id, segment_rows, entries, json.loads(info))
            segment.data = self._open_segment(segment, shared, settings)
            built[segment_id] = segment
        numbers = np.fromiter((row for row, _ in rows), dtype=np.int64, count=len(rows))
        if len(numbers) and not 0 <= numbers.min() <= numbers.max() < next_row:
            raise IndexCorruptError(f"{self.path / STORE} records rows outside the index")
        id_of = np.empty(next_row, dtype=object)
        id_of[numbers] = [doc_id for _, doc_id in rows]
        alive = np.zeros(next_row, dtype=bool)
        alive[numbers] = True
        id_of.flags.writeable = alive.flags.writeable = False
        return Snapshot(generation=meta["generation"], settings=settings, shared_files=shared_files, shared=shared,
                        segments=built, row_of={doc_id: row for row, doc_id in rows}, id_of=id_of, alive=alive,
                        next_row=next_row, next_segment=meta["next_segment"],
                        dead_rows=sum(int((~alive[s.rows]).sum()) for s in built.values()))

    # ----- writing
    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Group changes into one commit (one generation). Each add/remove outside it commits by itself. Store
        writes made in the block by this thread (``store.set_file_metadata``, ``store.put``...) join the commit."""
        with self._transaction():
            yield

    @contextmanager
    def _transaction(self) -> Iterator[Pending]:
        """This thread's transaction (joined when one is open): take the write lock, start from the latest commit,
        collect garbage, stage changes in the yielded ``Pending``, commit them at the end."""
        pending = self._current()
        if pending is not None:
            yield pending
            return
        if self.store.db.in_transaction:  # its commit would be published before that transaction ends (or rolls back)
            raise IndexInputError("an index write inside the document store's own transaction (store.transaction() "
                                  "or read_transaction()): group index changes with index.transaction() instead")
        try:
            self._lock.acquire(timeout=self.lock_timeout)
        except Timeout:
            raise IndexBusyError(f"another process (or thread) is writing to {self.path} (lock {self.path / LOCK} "
                                 f"held for {self.lock_timeout:.0f} s)") from None
        try:
            base, _ = self._view(None)
            self._collect_garbage()
            pending = self._local.pending = Pending(base)
            try:
                with self.store.staged() as writes:
                    yield pending
            finally:
                self._local.pending = None
            pending.store_writes = writes
            if pending.empty():
                return
            committed = self._commit(pending)
            if len(committed.segments) > MAX_SEGMENTS:
                with self._follow_up("the automatic merge of small segments"):
                    merge = Pending(committed)
                    self._merge_small_segments(merge)
                    self._commit(merge)
        finally:
            self._lock.release()

    @contextmanager
    def _follow_up(self, what: str) -> Iterator[None]:
        """Work that follows a change already committed (the automatic merge, PLAID's automatic re-clustering):
        its failure is logged as a warning, not raised. Raising would tell the caller that the change failed
        although it is committed (a retried add would then be refused as duplicate ids); the index is valid at
        that commit, the follow-up's unrecorded files are collected by the next writer, and the next write, which
        finds the same condition, tries again. (A distinct error type would make every caller of add handle it.)"""
        try:
            yield
        except Exception as error:
            log.warning("%s: %s failed (%s: %s); the change before it is committed, the next write tries again",
                        self.path, what, type(error).__name__, error, exc_info=True)

    def _checked(self, doc_ids: Sequence[str], embeddings: Any,
                 documents: Sequence[Document] | None) -> tuple[list[str], Any, list[Document]]:
        ids = _check_ids(doc_ids)
        return ids, self._check_embeddings(embeddings, ids), _check_documents(documents, ids)

    def add(self, doc_ids: Sequence[str], embeddings: Any, documents: Sequence[Document] | None = None) -> None:
        """Add new documents (an id already present is an error: use ``update``)."""
        ids, vectors, docs = self._checked(doc_ids, embeddings, documents)
        if not ids:
            return  # nothing to commit
        with self._transaction() as pending:
            self._add_new(pending, ids, vectors, docs)

    def update(self, doc_ids: Sequence[str], embeddings: Any, documents: Sequence[Document] | None = None) -> None:
        """Add or replace documents, in one commit."""
        ids, vectors, docs = self._checked(doc_ids, embeddings, documents)
        if not ids:
            return  # nothing to commit
        with self._transaction() as pending:
            self._remove(pending, [i for i in ids if self._present(pending, i)])
            self._add(pending, ids, vectors, docs)

    def remove(self, doc_ids: Sequence[str]) -> None:
        """Remove documents: never returned again. An unknown id is an error (nothing is removed then)."""
        ids = _check_ids(doc_ids)
        with self._transaction() as pending:
            self._remove_known(pending, ids)

    def add_stream(self, batches: Iterable[Batch | tuple[Sequence[str], Any]], expected_tokens: ExpectedTokens = None,
                   commit: Literal["once", "each"] = "once") -> None:
        """Apply a stream of changes (``Batch``: ids out, then ids in; or plain ``(ids, embeddings)`` pairs),
        holding one batch in memory at a time (a corpus larger than memory can be indexed).

        ``commit="once"``: the whole stream is one commit. ``commit="each"``: every batch is its own commit, so that
        a run killed midway keeps every batch committed before. Either way an index that needs a training sample
        before its first commit (PLAID without a codec) holds batches back until they make one (``sample_tokens``),
        trains on them, and commits them together (their removals included, in order). ``expected_tokens``: the
        tokens the index will hold, to size what is trained (PLAID's centroids); an int, or a function called with
        no argument when the training happens (an estimate made from the batches seen so far). Inside an open
        transaction everything joins it. A bad batch raises IndexInputError naming it; batches committed before
        it stay."""
        if commit not in ("once", "each"):
            raise IndexInputError(f"commit must be 'once' or 'each', got {commit!r}")
        outermost = self._current() is None
        with self._transaction() if commit == "once" else nullcontext():
            held: list[tuple[int, Batch]] = []  # (number in the stream, checked batch)
            held_tokens = 0
            for number, item in enumerate(batches):
                batch = self._check_batch(item, number)
                held.append((number, batch))
                held_tokens += self._tokens(batch.embeddings) if batch.ids else 0
                if held_tokens < self._sample_tokens_needed(self._current()):
                    continue
                self._commit_batches(held, expected_tokens)
                held, held_tokens = [], 0
            if held:
                self._commit_batches(held, expected_tokens)
        if outermost:
            self._after_stream()

    def _check_batch(self, item: Batch | tuple[Sequence[str], Any], number: int) -> Batch:
        """The batch with checked ids, embeddings (as the index stores them) and documents."""
        if isinstance(item, Batch):
            batch = item
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            batch = Batch(item[0], item[1])
        else:
            raise IndexInputError(f"batch {number}: expected a Batch or an (ids, embeddings) pair, "
                                  f"got {type(item).__name__}")
        try:
            ids, remove = _check_ids(batch.ids), _check_ids(batch.remove)
            if ids:
                vectors = self._check_embeddings(batch.embeddings, ids)
            elif len(batch.embeddings):
                raise IndexInputError(f"0 ids but {len(batch.embeddings)} embeddings")
            else:
                vectors = None
            return Batch(ids, vectors, _check_documents(batch.documents, ids), remove)
        except IndexInputError as error:
            raise IndexInputError(f"batch {number}: {error}") from None

    def _commit_batches(self, batches: list[tuple[int, Batch]], expected_tokens: ExpectedTokens) -> None:
        """``batches`` (numbered, checked) in one transaction, in order: each one's removals, then its additions."""
        with self._transaction() as pending:
            self._prepare_stream(pending, [batch for _, batch in batches], expected_tokens)
            for number, batch in batches:
                try:
                    if batch.remove:
                        self._remove_known(pending, list(batch.remove))
                    if batch.ids:
                        assert batch.documents is not None
                        self._add_new(pending, list(batch.ids), batch.embeddings, list(batch.documents))
                except IndexInputError as error:
                    raise IndexInputError(f"batch {number}: {error}") from None

    def save(self) -> None:
        """Every change is already durable when add/update/remove return (or when a transaction ends); kept so that
        ``save()`` in user code is harmless. Use ``compact()`` to reclaim the space of removed documents."""

    def compact(self) -> None:
        """Rewrite all segments into one, without the vectors of removed documents."""
        with self._transaction() as pending:
            base = pending.base
            if len(base.segments) > 1 or base.dead_rows:
                self._merge(pending, list(base.segments.values()))
            self.store.optimize_lexical()  # staged: the lexical table's b-trees are merged in the same commit

    def _present(self, pending: Pending, doc_id: str) -> bool:
        if doc_id in pending.documents:
            return True
        return doc_id in pending.base.row_of and doc_id not in pending.removed

    def _add_new(self, pending: Pending, ids: list[str], vectors: Any, documents: list[Document],
                 **write_options: Any) -> None:
        present = [i for i in ids if self._present(pending, i)]
        if present:
            raise IndexInputError(f"{len(present)} id(s) already in the index, e.g. {present[:3]}; "
                                  "use update() to replace them")
        self._add(pending, ids, vectors, documents, **write_options)

    def _remove_known(self, pending: Pending, ids: list[str]) -> None:
        unknown = [i for i in ids if not self._present(pending, i)]
        if unknown:
            raise IndexInputError(f"{len(unknown)} id(s) not in the index, e.g. {unknown[:3]}")
        self._remove(pending, ids)

    def _add(self, pending: Pending, ids: list[str], vectors: Any, documents: list[Document],
             **write_options: Any) -> None:
        rows = np.arange(pending.next_row, pending.next_row + len(ids), dtype=np.int64)
        segment = self._new_segment(pending, rows,
                                    lambda prefix: self._write_segment(pending, prefix, vectors, **write_options))
        pending.segments.append((segment, ids))
        pending.documents.update({d.doc_id: d for d in documents})
        pending.next_row += len(ids)

    def _remove(self, pending: Pending, ids: list[str]) -> None:
        for doc_id in ids:
            if pending.documents.pop(doc_id, None) is not None:  # added earlier in this same transaction
                for _, segment_ids in pending.segments:
                    if doc_id in segment_ids:
                        segment_ids[segment_ids.index(doc_id)] = None  # type: ignore[call-overload]
            else:
                pending.removed.add(doc_id)

    def _new_segment(self, pending: Pending, rows: np.ndarray, write) -> Segment:
        segment_id = pending.next_segment
        pending.next_segment += 1
        prefix = f"g{pending.base.generation + 1:06d}-s{segment_id:06d}"
        entries = write(prefix)
        entries["rows"] = files.write_array(self.files_dir, f"{prefix}-rows.npy", rows)
        segment = Segment(segment_id, rows, entries)
        segment.info = self._segment_info(segment)
        segment.data = self._open_segment(segment, pending.current_shared, pending.current_settings)
        return segment

    def _merge(self, pending: Pending, segments: list[Segment]) -> None:
        """Replace ``segments`` by one holding their live rows (rows keep their numbers)."""
        live = [(s, pending.base.alive[s.rows]) for s in segments]
        rows = np.concatenate([s.rows[keep] for s, keep in live]) if live else np.zeros(0, np.int64)
        self._replace(pending, segments, rows, lambda prefix: self._write_merged(pending, prefix, live))

    def _replace(self, pending: Pending, segments: list[Segment], rows: np.ndarray, write) -> None:
        """Stage one new segment holding ``rows`` (written by ``write(prefix)``) in place of ``segments``."""
        if len(rows):
            merged = self._new_segment(pending, rows, write)
            pending.segments.append((merged, []))
            pending.moved.update({s.id: merged.id for s in segments})
        pending.dropped.extend(s.id for s in segments)

    def _merge_small_segments(self, pending: Pending) -> None:
        ordered = sorted(pending.base.segments.values(), key=lambda s: len(s.rows))
        self._merge(pending, ordered[: len(ordered) - MAX_SEGMENTS // 2])

    def _commit(self, pending: Pending) -> Snapshot:
        """Record ``pending`` in one SQLite transaction (its files are fsynced first); returns the new snapshot."""
        fsync_dir(self.files_dir)
        base = pending.base
        generation = base.generation + 1
        with self.store.transaction() as db:
            if json.loads(db.execute("SELECT value FROM meta WHERE key='generation'").fetchone()[0]) != base.generation:
                raise IndexBusyError(f"{self.path} was changed by another writer during this commit")
            removed = list(pending.removed)
            db.executemany("DELETE FROM rows WHERE doc_id = ?", [(doc_id,) for doc_id in removed])
            delete_documents(db, removed)
            for old, new in pending.moved.items():
                db.execute("UPDATE rows SET segment = ? WHERE segment = ?", (new, old))
            for segment_id in pending.dropped:
                for entry in base.segments[segment_id].files.values():
                    db.execute("INSERT OR REPLACE INTO retired VALUES (?, ?)", (entry.name, generation))
                db.execute("DELETE FROM segments WHERE segment = ?", (segment_id,))
            for segment, ids in pending.segments:
                db.execute("INSERT INTO segments VALUES (?, ?, ?)", (
                    segment.id, json.dumps({k: v.to_json() for k, v in segment.files.items()}), json.dumps(segment.info)))
                db.executemany("INSERT INTO rows VALUES (?, ?, ?)", [
                    (int(row), doc_id, segment.id) for row, doc_id in zip(segment.rows, ids) if doc_id is not None])
            write_documents(db, list(pending.documents.values()))
            for write in pending.store_writes:  # after the documents: they may update the ones just added
                write(db)
            if pending.shared is not None:
                for name, entry in base.shared_files.items():
                    if pending.shared.get(name) != entry:
                        db.execute("INSERT OR REPLACE INTO retired VALUES (?, ?)", (entry.name, generation))
            db.execute("DELETE FROM retired WHERE generation < ?", (generation - 1,))
            meta = {"generation": generation, "next_row": pending.next_row, "next_segment": pending.next_segment}
            if pending.shared is not None:
                meta["shared_files"] = {k: v.to_json() for k, v in pending.shared.items()}
            if pending.settings is not None:
                meta["settings"] = pending.settings
            for key, value in meta.items():
                db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))
        return self._load(opened={segment.id: segment for segment, _ in pending.segments})

    def _collect_garbage(self) -> None:
        """Delete files no commit refers to (left by a killed writer, or retired over a generation ago). Readers
        may still read the files of the previous generation, so those stay one more commit. (Readers of older
        snapshots in this process hold their files open: memory maps, PLAID's residual descriptors.)"""
        state = self._snapshot()
        keep = {e.name for s in state.segments.values() for e in s.files.values()}
        keep |= {e.name for e in state.shared_files.values()}
        keep |= {r[0] for r in self.store.db.execute("SELECT name FROM retired WHERE generation >= ?",
                                                     (state.generation,))}
        for path in self.files_dir.iterdir():
            if path.name not in keep:
                path.unlink(missing_ok=True)

    # ----- reading
    def search(self, queries: Any, k: int = 10, filter: Filter = None, **options: Any) -> list[Hits]:
        """For each query, up to ``k`` (doc_id, score) pairs, best first. ``filter``: a SQL predicate over the
        documents table (optionally with parameters) or a collection of ids; only matching documents are returned."""
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise IndexInputError(f"k must be a positive integer, got {k!r}")
        queries = self._check_queries(queries)
        snapshot, allowed = self._view(filter)
        try:
            results = self._search(snapshot, queries, int(k), allowed, **options)
        except TypeError as error:
            if "unexpected keyword argument" not in str(error):
                raise
            raise IndexInputError(f"unknown search option: {str(error).rsplit(' ', 1)[-1]}") from None
        for rows, _ in results:
            if len(rows) and (rows.min() < 0 or rows.max() >= snapshot.next_row or not snapshot.alive[rows].all()):
                raise IndexCorruptError(f"{self.path} returned rows that are not in the index: a file is damaged "
                                        "(run verify())")
        return [[(snapshot.id_of[row], float(score)) for row, score in zip(rows, scores)] for rows, scores in results]

    def _allowed_rows(self, snapshot: Snapshot, filter: Filter) -> np.ndarray | None:
        """None when every row may be returned, else a boolean mask over rows."""
        if filter is None:
            return None if not snapshot.dead_rows else snapshot.alive
        mask = np.zeros(snapshot.next_row, dtype=bool)
        rows = [snapshot.row_of[i] for i in self.store.ids(filter) if i in snapshot.row_of]
        mask[np.asarray(rows, dtype=np.int64)] = True
        return mask & snapshot.alive

    def __len__(self) -> int:
        return len(self._view(None)[0].row_of)

    def __contains__(self, doc_id: str) -> bool:
        return doc_id in self._view(None)[0].row_of

    def documents(self, doc_ids: Sequence[str]) -> list[Document | None]:
        return self.store.get(doc_ids)

    def stats(self) -> dict[str, Any]:
        """What the latest commit holds (every figure from the same generation) and the folder's size."""
        return self._stats(self._view(None)[0])

    def _stats(self, snapshot: Snapshot) -> dict[str, Any]:
        return {"kind": self.kind, "documents": len(snapshot.row_of), "generation": snapshot.generation,
                "segments": len(snapshot.segments), "removed_not_compacted": snapshot.dead_rows,
                "bytes_on_disk": self._bytes_on_disk(), **snapshot.settings}

    def _bytes_on_disk(self) -> int:
        return folder_bytes(self.files_dir, self.path / STORE)

    def verify(self) -> None:
        """Checksum every file of the current generation and check the database; raises IndexCorruptError."""
        snapshot = self._view(None)[0]
        for segment in snapshot.segments.values():
            for entry in segment.files.values():
                files.verify(self.files_dir, entry)
        for entry in snapshot.shared_files.values():
            files.verify(self.files_dir, entry)
        result = self.store.db.execute("PRAGMA integrity_check").fetchone()[0]
        if result != "ok":
            raise IndexCorruptError(f"{self.path / STORE} fails SQLite's integrity check: {result}")
        if self.store.lexical_ready:
            try:
                with self.store.read_transaction() as db:
                    problem = lexical.check(db)
            except sqlite3.OperationalError as error:
                raise IndexBusyError(f"{self.path} is being written to; verify it again later ({error})") from None
            if problem:
                raise IndexCorruptError(f"{self.path / STORE}: {problem}")

    # ----- what subclasses provide
    def _open_shared(self, shared: dict[str, FileEntry], settings: dict[str, Any]) -> Any:
        """Open files shared by all segments (a trained quantizer or codec): ``Snapshot.shared``."""
        return None

    def _check_embeddings(self, embeddings: Any, ids: list[str]) -> Any:
        raise NotImplementedError

    def _check_queries(self, queries: Any) -> Any:
        raise NotImplementedError

    def _write_segment(self, pending: Pending, prefix: str, vectors: Any, **options: Any) -> dict[str, FileEntry]:
        raise NotImplementedError

    def _write_merged(self, pending: Pending, prefix: str,
                      live: list[tuple[Segment, np.ndarray]]) -> dict[str, FileEntry]:
        raise NotImplementedError

    def _segment_info(self, segment: Segment) -> dict[str, Any]:
        return {"n": int(len(segment.rows))}

    def _open_segment(self, segment: Segment, shared: Any, settings: dict[str, Any]) -> Any:
        raise NotImplementedError

    def _search(self, snapshot: Snapshot, queries: Any, k: int, allowed: np.ndarray | None, **options: Any):
        raise NotImplementedError

    def _tokens(self, vectors: Any) -> int:
        """How much a batch of checked embeddings weighs towards a training sample."""
        return len(vectors)

    def _sample_tokens_needed(self, pending: Pending | None) -> int:
        """Tokens a stream must hold back before its first commit, to train on (0: none; PLAID without a codec)."""
        return 0

    def _prepare_stream(self, pending: Pending, batches: list[Batch], expected_tokens: ExpectedTokens) -> None:
        """Before ``batches`` are added in ``pending``: train on them if the index needs it (PLAID)."""

    def _after_stream(self) -> None:
        """After a stream is committed (PLAID: re-cluster when it outgrew its codec)."""


def _check_ids(doc_ids: Sequence[str]) -> list[str]:
    if isinstance(doc_ids, str):
        raise IndexInputError("doc_ids must be a list of strings, not one string")
    ids = list(doc_ids)
    bad = [i for i in ids if not isinstance(i, str) or not i]
    if bad:
        raise IndexInputError(f"document ids must be non-empty strings; got {bad[:3]!r}")
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dups = [i for i in ids if i in seen or seen.add(i)]  # type: ignore[func-returns-value]
        raise IndexInputError(f"duplicate ids in one call: {dups[:3]}")
    return ids


def _check_documents(documents: Sequence[Document] | None, ids: list[str]) -> list[Document]:
    if documents is None:
        return [Document(i) for i in ids]
    documents = list(documents)
    if [d.doc_id for d in documents] != ids:
        raise IndexInputError("documents must be given in the same order, with the same ids, as doc_ids")
    return documents


def check_finite(array: np.ndarray, what: str) -> None:
    if not np.isfinite(array).all():
        raise IndexInputError(f"{what} contains NaN or infinite values")


def sqrt_count(n: int, factor: float = 16.0) -> int:
    return max(1, int(2 ** math.floor(math.log2(factor * math.sqrt(max(n, 1))))))
