"""What every index shares: the folder, its generations and commits, ids, filters, and the write lock.

An index folder holds ``store.sqlite`` (documents, metadata, and the index's own tables) and ``files/`` (immutable
vector files). Vectors live in *segments*: each ``add`` writes one new segment; a removal only deletes rows from the
database (a tombstone: the vectors stay on disk but are never returned) until ``compact`` rewrites the segments.
Every change is one commit: new files are written and fsynced first, then a single SQLite transaction records them,
the rows, the documents and the new generation number. A process killed at any moment therefore leaves the index in
the state of its last commit; files written for a commit that never happened are deleted by the next writer.

Rows are global, stable integers (one per document); segments map their local positions to rows. One writer at a
time holds ``write.lock``; readers see a new commit at their next search.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from filelock import FileLock, Timeout

from . import files
from .errors import IndexBusyError, IndexCorruptError, IndexInputError
from .files import FileEntry
from .store import Document, DocumentStore, Filter

STORE, FILES, LOCK = "store.sqlite", "files", "write.lock"
INDEX_SCHEMA = """
CREATE TABLE IF NOT EXISTS segments (segment INTEGER PRIMARY KEY, files TEXT NOT NULL, info TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rows (row INTEGER PRIMARY KEY, doc_id TEXT NOT NULL UNIQUE, segment INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS retired (name TEXT PRIMARY KEY, generation INTEGER NOT NULL);
"""
MAX_SEGMENTS = 16  # more than this after a commit: the small ones are merged
Hits = list[tuple[str, float]]


@dataclass
class Segment:
    """Vectors written by one commit. ``rows[i]`` is the global row of local item i; ``data`` is the subclass's."""

    id: int
    rows: np.ndarray
    files: dict[str, FileEntry]
    info: dict[str, Any] = field(default_factory=dict)
    data: Any = None


@dataclass
class _Pending:
    segments: list[tuple[Segment, list[str]]] = field(default_factory=list)  # new segments and their doc ids
    removed: set[str] = field(default_factory=set)
    dropped: list[int] = field(default_factory=list)  # segments replaced by a merge
    moved: dict[int, int] = field(default_factory=dict)  # old segment -> merged segment
    documents: dict[str, Document] = field(default_factory=dict)
    shared: dict[str, FileEntry] | None = None
    settings: dict[str, Any] | None = None
    next_row: int = 0
    next_segment: int = 0

    def empty(self) -> bool:
        return not (self.segments or self.removed or self.dropped or self.shared or self.settings)


class VectorIndex:
    """Base of FaissIndex and PlaidIndex: subclasses say how a segment is written, opened, merged and searched."""

    kind: ClassVar[str]

    def __init__(self, path: Path, lock_timeout: float):
        self.path = path
        self.files_dir = path / FILES
        self.store = DocumentStore(path / STORE)
        self._lock = FileLock(str(path / LOCK))
        self.lock_timeout = lock_timeout
        self._pending: _Pending | None = None
        self._segments: dict[int, Segment] = {}
        self.generation = -1
        try:
            self._load()
        except BaseException:
            self.store.close()
            raise

    # ----- creating and opening
    @classmethod
    def _create(cls, path: str | Path, settings: dict[str, Any], lock_timeout: float = 60.0):
        path = Path(path)
        if (path / STORE).exists():
            raise IndexInputError(f"{path} already holds an index; open it with {cls.__name__}.open")
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
        files.fsync_dir(path)
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
    def _load(self) -> None:
        """Read one consistent snapshot of the committed state, reusing segments already open (they never change).
        A reader racing a fast writer may find the files of its snapshot already collected: it reads again."""
        for attempt in range(5):
            meta, segments, rows, version = self._read_snapshot()
            try:
                return self._apply(meta, segments, rows, version)
            except IndexCorruptError:
                if attempt == 4 or self.store.get_meta("generation") == meta["generation"]:
                    raise  # nothing moved on: the folder itself is damaged

    def _read_snapshot(self) -> tuple[dict, list, list, int]:
        db = self.store.db
        db.execute("BEGIN")
        try:
            meta = {k: json.loads(v) for k, v in db.execute("SELECT key, value FROM meta")}
            segments = db.execute("SELECT segment, files, info FROM segments ORDER BY segment").fetchall()
            rows = db.execute("SELECT row, doc_id FROM rows").fetchall()
            version = self.store.data_version()  # inside the snapshot: a later commit is seen as a change
        except Exception as error:
            raise IndexCorruptError(f"{self.path / STORE} is not an index database ({error})") from None
        finally:
            db.execute("COMMIT")
        if meta.get("kind") != self.kind:
            raise IndexCorruptError(f"{self.path} is a {meta.get('kind')!r} index, not {self.kind!r}")
        return meta, segments, rows, version

    def _apply(self, meta: dict, segments: list, rows: list, version: int) -> None:
        self.settings: dict[str, Any] = meta["settings"]
        next_row = meta["next_row"]
        shared = {k: FileEntry.from_json(v) for k, v in meta["shared_files"].items()}
        if self.generation < 0 or shared != getattr(self, "shared_files", None):
            self._open_shared(shared)
            self.shared_files = shared
        opened = {}
        for segment_id, segment_files, info in segments:
            if segment_id in self._segments:
                opened[segment_id] = self._segments[segment_id]
                continue
            entries = {k: FileEntry.from_json(v) for k, v in json.loads(segment_files).items()}
            segment_rows = files.open_array(self.files_dir, entries["rows"])
            if segment_rows.ndim != 1 or (len(segment_rows) and not 0 <= segment_rows.min() <= segment_rows.max() < next_row):
                raise IndexCorruptError(f"{self.files_dir / entries['rows'].name} holds rows outside the index")
            segment = Segment(segment_id, segment_rows, entries, json.loads(info))
            segment.data = self._open_segment(segment)
            opened[segment_id] = segment
        self._segments = opened
        self.generation, self.next_row, self.next_segment = meta["generation"], next_row, meta["next_segment"]
        self._row_of = {doc_id: row for row, doc_id in rows}
        self._id_of = np.empty(self.next_row, dtype=object)
        self._alive = np.zeros(self.next_row, dtype=bool)
        for row, doc_id in rows:
            self._id_of[row], self._alive[row] = doc_id, True
        self.dead_rows = sum(int((~self._alive[s.rows]).sum()) for s in self._segments.values())
        self._version = version

    def refresh(self) -> None:
        """See the latest commit (search does this by itself when another process has committed)."""
        if self._pending is not None:
            return
        version = self.store.data_version()
        if version != self._version:
            if self.store.get_meta("generation") != self.generation:
                self._load()
            else:
                self._version = version

    # ----- writing
    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Group changes into one commit (one generation). Each add/remove outside it commits by itself."""
        if self._pending is not None:
            yield
            return
        try:
            self._lock.acquire(timeout=self.lock_timeout)
        except Timeout:
            raise IndexBusyError(f"another process is writing to {self.path} (lock {self.path / LOCK} held for "
                                 f"{self.lock_timeout:.0f} s)") from None
        try:
            self.refresh()
            self._collect_garbage()
            self._pending = _Pending(next_row=self.next_row, next_segment=self.next_segment)
            try:
                yield
                if not self._pending.empty():
                    self._commit(self._pending)
            except BaseException:
                self._pending = None
                self._load()
                raise
            self._pending = None
            if len(self._segments) > MAX_SEGMENTS:
                self._pending = _Pending(next_row=self.next_row, next_segment=self.next_segment)
                self._merge_small_segments()
                self._commit(self._pending)
                self._pending = None
        finally:
            self._pending = None
            self._lock.release()

    def add(self, doc_ids: Sequence[str], embeddings: Any, documents: Sequence[Document] | None = None) -> None:
        """Add new documents (an id already present is an error: use ``update``)."""
        ids = _check_ids(doc_ids)
        vectors = self._check_embeddings(embeddings, ids)
        docs = _check_documents(documents, ids)
        with self.transaction():
            present = [i for i in ids if self._present(i)]
            if present:
                raise IndexInputError(f"{len(present)} id(s) already in the index, e.g. {present[:3]}; "
                                      "use update() to replace them")
            self._add(ids, vectors, docs)

    def update(self, doc_ids: Sequence[str], embeddings: Any, documents: Sequence[Document] | None = None) -> None:
        """Add or replace documents, in one commit."""
        ids = _check_ids(doc_ids)
        vectors = self._check_embeddings(embeddings, ids)
        docs = _check_documents(documents, ids)
        with self.transaction():
            self._remove([i for i in ids if self._present(i)])
            self._add(ids, vectors, docs)

    def remove(self, doc_ids: Sequence[str]) -> None:
        """Remove documents: never returned again. An unknown id is an error (nothing is removed then)."""
        ids = _check_ids(doc_ids)
        with self.transaction():
            unknown = [i for i in ids if not self._present(i)]
            if unknown:
                raise IndexInputError(f"{len(unknown)} id(s) not in the index, e.g. {unknown[:3]}")
            self._remove(ids)

    def save(self) -> None:
        """Every change is already durable when add/update/remove return (or when a transaction ends); kept so that
        ``save()`` in user code is harmless. Use ``compact()`` to reclaim the space of removed documents."""

    def compact(self) -> None:
        """Rewrite all segments into one, without the vectors of removed documents."""
        with self.transaction():
            if len(self._segments) > 1 or self.dead_rows:
                self._merge(list(self._segments.values()))

    def _present(self, doc_id: str) -> bool:
        pending = self._pending
        if pending is not None and doc_id in pending.documents:
            return True
        return doc_id in self._row_of and (pending is None or doc_id not in pending.removed)

    def _add(self, ids: list[str], vectors: Any, documents: list[Document]) -> None:
        pending = self._pending
        assert pending is not None
        rows = np.arange(pending.next_row, pending.next_row + len(ids), dtype=np.int64)
        segment = self._new_segment(pending, rows, lambda prefix: self._write_segment(prefix, vectors))
        pending.segments.append((segment, ids))
        pending.documents.update({d.doc_id: d for d in documents})
        pending.next_row += len(ids)

    def _remove(self, ids: list[str]) -> None:
        pending = self._pending
        assert pending is not None
        for doc_id in ids:
            if pending.documents.pop(doc_id, None) is not None:  # added earlier in this same transaction
                for segment, segment_ids in pending.segments:
                    if doc_id in segment_ids:
                        segment_ids[segment_ids.index(doc_id)] = None  # type: ignore[call-overload]
            else:
                pending.removed.add(doc_id)

    def _new_segment(self, pending: _Pending, rows: np.ndarray, write) -> Segment:
        segment_id = pending.next_segment
        pending.next_segment += 1
        prefix = f"g{self.generation + 1:06d}-s{segment_id:06d}"
        entries = write(prefix)
        entries["rows"] = files.write_array(self.files_dir, f"{prefix}-rows.npy", rows)
        segment = Segment(segment_id, rows, entries)
        segment.info = self._segment_info(segment)
        segment.data = self._open_segment(segment)
        return segment

    def _merge(self, segments: list[Segment]) -> None:
        """Replace ``segments`` by one holding their live rows (rows keep their numbers)."""
        pending = self._pending
        assert pending is not None
        live = [(s, self._alive[s.rows]) for s in segments]
        rows = np.concatenate([s.rows[keep] for s, keep in live]) if live else np.zeros(0, np.int64)
        self._replace(segments, rows, lambda prefix: self._write_merged(prefix, live))

    def _replace(self, segments: list[Segment], rows: np.ndarray, write) -> None:
        """Stage one new segment holding ``rows`` (written by ``write(prefix)``) in place of ``segments``."""
        pending = self._pending
        assert pending is not None
        if len(rows):
            merged = self._new_segment(pending, rows, write)
            pending.segments.append((merged, []))
            pending.moved.update({s.id: merged.id for s in segments})
        pending.dropped.extend(s.id for s in segments)

    def _merge_small_segments(self) -> None:
        ordered = sorted(self._segments.values(), key=lambda s: len(s.rows))
        self._merge(ordered[: len(ordered) - MAX_SEGMENTS // 2])

    def _commit(self, pending: _Pending) -> None:
        files.fsync_dir(self.files_dir)
        generation = self.generation + 1
        with self.store.transaction() as db:
            if json.loads(db.execute("SELECT value FROM meta WHERE key='generation'").fetchone()[0]) != self.generation:
                raise IndexBusyError(f"{self.path} was changed by another writer during this commit")
            for doc_id in pending.removed:
                db.execute("DELETE FROM rows WHERE doc_id = ?", (doc_id,))
                db.execute("DELETE FROM documents WHERE doc_id = ?", (doc_id,))
            for old, new in pending.moved.items():
                db.execute("UPDATE rows SET segment = ? WHERE segment = ?", (new, old))
            for segment_id in pending.dropped:
                for entry in self._segments[segment_id].files.values():
                    db.execute("INSERT OR REPLACE INTO retired VALUES (?, ?)", (entry.name, generation))
                db.execute("DELETE FROM segments WHERE segment = ?", (segment_id,))
            for segment, ids in pending.segments:
                db.execute("INSERT INTO segments VALUES (?, ?, ?)", (
                    segment.id, json.dumps({k: v.to_json() for k, v in segment.files.items()}), json.dumps(segment.info)))
                db.executemany("INSERT INTO rows VALUES (?, ?, ?)", [
                    (int(row), doc_id, segment.id) for row, doc_id in zip(segment.rows, ids) if doc_id is not None])
            db.executemany("INSERT OR REPLACE INTO documents VALUES (?, ?, ?, ?, ?, ?, ?)",
                           [d.row() for d in pending.documents.values()])
            if pending.shared is not None:
                for name, entry in self.shared_files.items():
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
        for segment, _ in pending.segments:
            self._segments[segment.id] = segment
        self._load()

    def _collect_garbage(self) -> None:
        """Delete files no commit refers to (left by a killed writer, or retired over a generation ago). Readers
        may still read the files of the previous generation, so those stay one more commit."""
        keep = {e.name for s in self._segments.values() for e in s.files.values()}
        keep |= {e.name for e in self.shared_files.values()}
        keep |= {r[0] for r in self.store.db.execute("SELECT name FROM retired WHERE generation >= ?",
                                                     (self.generation,))}
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
        self.refresh()
        allowed = self._allowed_rows(filter)
        results = self._search(queries, int(k), allowed, **options)
        for rows, _ in results:
            if len(rows) and (rows.min() < 0 or rows.max() >= self.next_row or not self._alive[rows].all()):
                raise IndexCorruptError(f"{self.path} returned rows that are not in the index: a file is damaged "
                                        "(run verify())")
        return [[(self._id_of[row], float(score)) for row, score in zip(rows, scores)] for rows, scores in results]

    def _allowed_rows(self, filter: Filter) -> np.ndarray | None:
        """None when every row may be returned, else a boolean mask over rows."""
        if filter is None:
            return None if not self.dead_rows else self._alive
        mask = np.zeros(self.next_row, dtype=bool)
        rows = [self._row_of[i] for i in self.store.ids(filter) if i in self._row_of]
        mask[np.asarray(rows, dtype=np.int64)] = True
        return mask & self._alive

    def __len__(self) -> int:
        return len(self._row_of)

    def __contains__(self, doc_id: str) -> bool:
        return doc_id in self._row_of

    def documents(self, doc_ids: Sequence[str]) -> list[Document | None]:
        return self.store.get(doc_ids)

    def stats(self) -> dict[str, Any]:
        on_disk = sum(p.stat().st_size for p in self.files_dir.iterdir()) + (self.path / STORE).stat().st_size
        return {"kind": self.kind, "documents": len(self), "generation": self.generation,
                "segments": len(self._segments), "removed_not_compacted": self.dead_rows,
                "bytes_on_disk": on_disk, **self.settings}

    def verify(self) -> None:
        """Checksum every file of the current generation and check the database; raises IndexCorruptError."""
        for segment in self._segments.values():
            for entry in segment.files.values():
                files.verify(self.files_dir, entry)
        for entry in self.shared_files.values():
            files.verify(self.files_dir, entry)
        result = self.store.db.execute("PRAGMA integrity_check").fetchone()[0]
        if result != "ok":
            raise IndexCorruptError(f"{self.path / STORE} fails SQLite's integrity check: {result}")

    # ----- what subclasses provide
    def _open_shared(self, shared: dict[str, FileEntry]) -> None:
        """Open files shared by all segments (a trained quantizer or codec)."""

    def _check_embeddings(self, embeddings: Any, ids: list[str]) -> Any:
        raise NotImplementedError

    def _check_queries(self, queries: Any) -> Any:
        raise NotImplementedError

    def _write_segment(self, prefix: str, vectors: Any) -> dict[str, FileEntry]:
        raise NotImplementedError

    def _write_merged(self, prefix: str, live: list[tuple[Segment, np.ndarray]]) -> dict[str, FileEntry]:
        raise NotImplementedError

    def _segment_info(self, segment: Segment) -> dict[str, Any]:
        return {"n": int(len(segment.rows))}

    def _open_segment(self, segment: Segment) -> Any:
        raise NotImplementedError

    def _search(self, queries: Any, k: int, allowed: np.ndarray | None, **options: Any):
        raise NotImplementedError


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
