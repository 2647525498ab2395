"""The SQLite store: documents and their metadata, beside the vectors, in the same database file.

One database per index folder (``store.sqlite``) holds the documents and the index's own tables (which vector rows
belong to which document, which files make up the current generation), so that a single SQLite transaction commits
documents and vectors together. WAL mode lets readers keep reading while a writer commits.

A filter for search is either a SQL predicate over the ``documents`` table (with optional parameters), e.g.
``"source LIKE 'src/%' AND json_extract(metadata, '$.lang') = ?", ["python"]``, or a collection of document ids.

Documents that share a ``source`` (the chunks of one file) can be asked about as a file (``files``, ``sources``,
``count_sources``, ``ids_of_sources``, ``set_file_metadata``), so that no caller needs SQL for the usual questions.

Threads: each thread reads and writes through its own connection (a SQLite connection must not be used by two
threads at once, and a transaction belongs to one connection), opened on its first use and closed by ``close()``.
Every single call reads one committed state (``get`` of many ids included); ``read_transaction`` makes several calls
read the same one. Writes made by a thread that is inside an index transaction are staged by that index
(``staged``) and committed with it.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import weakref
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import lexical
from .errors import IndexCorruptError, IndexInputError

SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    doc_id TEXT PRIMARY KEY, source TEXT, start_line INTEGER, end_line INTEGER, content_hash TEXT,
    metadata TEXT NOT NULL DEFAULT '{}', text TEXT);
CREATE INDEX IF NOT EXISTS documents_source ON documents(source);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
LEXICAL_VERSION = "lexical_version"  # meta key: the lexical.TERMS_VERSION the lexical rows were written with
Filter = str | tuple[str, Sequence[Any]] | Iterable[str] | None
Write = Callable[[sqlite3.Connection], None]  # one staged write: runs inside the transaction that commits it


@dataclass
class Document:
    """What the store keeps of one document (or chunk): where it comes from, which span, a hash to detect change."""

    doc_id: str
    source: str | None = None
    start_line: int | None = None
    end_line: int | None = None
    content_hash: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    text: str | None = None

    def row(self) -> tuple:
        return (self.doc_id, self.source, self.start_line, self.end_line, self.content_hash,
                json.dumps(self.metadata, ensure_ascii=False), self.text)


@dataclass(frozen=True)
class FileRecord:
    """What the store holds of one source (a file): its documents' ids in the order of their metadata "chunk" (then
    by id), and what all of them agree on. A document that disagrees (a half-updated file, which a store written
    through ``set_file_metadata`` never holds) leaves ``content_hash`` None or the key out of ``metadata``, so that a
    caller comparing them with the file on disk sees a change rather than trusting one chunk."""

    source: str
    doc_ids: tuple[str, ...]
    content_hash: str | None
    metadata: dict[str, Any]  # keys with the same value in every document of the source (mtime_ns, size, ...)


class DocumentStore:
    """Documents by id, in ``path`` (a SQLite file). Usable alone, and owned by every index for its folder."""

    def __init__(self, path: str | Path, readonly: bool = False):
        self.path = Path(path)
        self.readonly = readonly
        self._local = threading.local()  # this thread's connection, transaction depth and staged writes
        self._connections: list[tuple[weakref.ref[threading.Thread], sqlite3.Connection]] = []
        self._connections_lock = threading.Lock()
        self._closed = False
        self._lexical_statistics = lexical.StatisticsCache()
        try:
            db = self.db
            if not readonly:
                db.executescript(SCHEMA)
                self._upgrade_lexical()
            db.execute("SELECT count(*) FROM documents").fetchone()
        except sqlite3.DatabaseError as error:
            self.close()
            raise IndexCorruptError(f"{self.path} is not a readable document store ({error})") from None

    def _upgrade_lexical(self) -> None:
        """Give a store written before the lexical side (or by an older ``lexical.TERMS_VERSION``) its rows, once,
        in one transaction: an old index gains lexical search the first time a writable store opens it."""
        if self.get_meta(LEXICAL_VERSION) == lexical.TERMS_VERSION and lexical.exists(self.db):
            return
        with self.transaction() as db:
            if self.get_meta(LEXICAL_VERSION) != lexical.TERMS_VERSION or not lexical.exists(db):
                lexical.rebuild(db)
                db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (LEXICAL_VERSION, lexical.TERMS_VERSION))

    @property
    def lexical_ready(self) -> bool:
        """Whether lexical search can run (False only for an old store opened read-only, before any writer)."""
        return self.get_meta(LEXICAL_VERSION) == lexical.TERMS_VERSION and lexical.exists(self.db)

    @property
    def db(self) -> sqlite3.Connection:
        """This thread's connection (opened on first use)."""
        db = getattr(self._local, "db", None)
        return db if db is not None else self._connect()

    def _connect(self) -> sqlite3.Connection:
        if self._closed:
            raise sqlite3.ProgrammingError(f"the document store {self.path} is closed")
        uri = f"file:{self.path}?mode=ro" if self.readonly else f"file:{self.path}"
        # check_same_thread=False only so that close() may close every thread's connection; each is used by one
        db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=30)
        try:
            if not self.readonly:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")  # per connection: a commit is on disk when it returns
        except BaseException:
            db.close()
            raise
        with self._connections_lock:
            alive = []
            for thread, other in self._connections:  # connections of threads that have ended are closed here
                owner = thread()
                if owner is None or not owner.is_alive():
                    other.close()
                else:
                    alive.append((thread, other))
            self._connections = [*alive, (weakref.ref(threading.current_thread()), db)]
        self._local.db = db
        return db

    def close(self) -> None:
        """Close every thread's connection. Using the store afterwards is an error."""
        with self._connections_lock:
            self._closed = True
            connections, self._connections = self._connections, []
        for _, db in connections:
            db.close()
        self._local = threading.local()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic commit (nested uses join the outer one). BEGIN IMMEDIATE: the write lock is taken up front."""
        local, db = self._local, self.db
        if getattr(local, "depth", 0):
            local.depth += 1
            try:
                yield db
            finally:
                local.depth -= 1
            return
        db.execute("BEGIN IMMEDIATE")
        local.depth = 1
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        else:
            try:
                db.execute("COMMIT")
            except sqlite3.Error:  # disk full, an I/O error: end the transaction, or this connection stays in it
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        finally:
            local.depth = 0

    @contextmanager
    def read_transaction(self) -> Iterator[sqlite3.Connection]:
        """Every query in the block reads the same committed state (SQLite's snapshot isolation in WAL mode), on this
        thread's connection; inside a transaction already open on this thread, that one is joined."""
        db = self.db
        if db.in_transaction:
            yield db
            return
        db.execute("BEGIN")
        try:
            yield db
        finally:
            db.execute("COMMIT")  # a read-only transaction: this only ends its snapshot

    @contextmanager
    def staged(self) -> Iterator[list[Write]]:
        """For an owner that commits documents in a transaction of its own (an index): while the block runs, this
        thread's writes through ``put``, ``delete``, ``set_meta`` and ``set_file_metadata`` are not run but appended
        to the yielded list, for the owner to run inside its commit (so they are atomic with it and invisible until
        then, like the owner's own changes). A write inside an explicit ``transaction()`` still joins that one."""
        local = self._local
        if getattr(local, "staged", None) is not None:
            yield local.staged
            return
        local.staged = writes = []
        try:
            yield writes
        finally:
            local.staged = None

    def _write(self, write: Write) -> None:
        """Run ``write`` in its own transaction (or the one open on this thread), or stage it (see ``staged``)."""
        staged = getattr(self._local, "staged", None)
        if staged is not None and not getattr(self._local, "depth", 0):
            staged.append(write)
            return
        with self.transaction() as db:
            write(db)

    # documents
    def put(self, documents: Iterable[Document]) -> None:
        """Insert or replace documents by id."""
        documents = list(documents)
        self._write(lambda db: write_documents(db, documents))

    def get(self, doc_ids: Sequence[str]) -> list[Document | None]:
        """Documents in the order asked, None where an id is unknown (all read from one committed state)."""
        found: dict[str, Document] = {}
        with self.read_transaction() as db:
            for start in range(0, len(doc_ids), 500):
                chunk = list(doc_ids[start:start + 500])
                rows = db.execute(f"SELECT * FROM documents WHERE doc_id IN ({','.join('?' * len(chunk))})", chunk)
                for row in rows:
                    found[row[0]] = Document(row[0], row[1], row[2], row[3], row[4], json.loads(row[5]), row[6])
        return [found.get(i) for i in doc_ids]

    def delete(self, doc_ids: Iterable[str]) -> None:
        ids = list(doc_ids)
        self._write(lambda db: delete_documents(db, ids))

    def ids(self, filter: Filter = None) -> list[str]:
        """Ids of the documents matching ``filter`` (all when None)."""
        db = self.db
        if filter is None:
            return [r[0] for r in db.execute("SELECT doc_id FROM documents ORDER BY doc_id")]
        if is_sql_filter(filter):
            where, params = (filter, ()) if isinstance(filter, str) else filter  # type: ignore[misc]
            try:
                return [r[0] for r in db.execute(f"SELECT doc_id FROM documents WHERE {where}", tuple(params))]
            except sqlite3.Error as error:
                raise IndexInputError(f"the filter {where!r} is not a valid SQL predicate over documents "
                                      f"(columns: doc_id, source, start_line, end_line, content_hash, metadata, "
                                      f"text): {error}") from None
        return list(filter)

    def lexical_search(self, query: str, k: int, filter: Filter = None,
                       weights: Sequence[float] = lexical.DEFAULT_WEIGHTS, k1: float = lexical.K1,
                       b: float = lexical.B) -> list[tuple[str, float]]:
        """The ``k`` best documents for ``query`` by BM25 over their path, symbols and text (lexical.py), best first,
        among those ``filter`` lets through; ``weights``: one per field (path, symbols, body); ``k1``, ``b``: BM25's
        (Lucene's defaults)."""
        if not self.lexical_ready:
            raise IndexInputError(f"{self.path} has no lexical index yet (written by an older version and opened "
                                  "read-only): open it once for writing (`mret index`) to add it")
        if filter is None:
            where, params = "", ()
        elif is_sql_filter(filter):
            where, params = (filter, ()) if isinstance(filter, str) else filter  # type: ignore[misc]
        else:
            where, params = "doc_id IN (SELECT value FROM json_each(?))", (json.dumps(list(filter)),)  # type: ignore[arg-type]
        try:
            with self.read_transaction() as db:
                return lexical.search(db, query, k, where, tuple(params), weights, k1, b, self._lexical_statistics)
        except sqlite3.OperationalError as error:
            if is_sql_filter(filter):
                raise IndexInputError(f"the filter {where!r} is not a valid SQL predicate over documents: "
                                      f"{error}") from None
            raise

    def optimize_lexical(self) -> None:
        """Merge the lexical table's b-trees (compaction); staged like every write (see ``staged``)."""
        self._write(lexical.optimize)

    def __len__(self) -> int:
        """The number of documents."""
        return self.db.execute("SELECT count(*) FROM documents").fetchone()[0]

    def __contains__(self, doc_id: str) -> bool:
        return self.db.execute("SELECT 1 FROM documents WHERE doc_id = ?", (doc_id,)).fetchone() is not None

    # files: the documents of one source, together
    def files(self) -> dict[str, FileRecord]:
        """Every source (documents without one are left out), in sorted order, with its documents' ids in "chunk"
        order, and the content hash and metadata they agree on (see FileRecord)."""
        records: dict[str, tuple[list[str], set, dict[str, Any]]] = {}
        rows = self.db.execute("SELECT source, doc_id, content_hash, metadata FROM documents WHERE source IS NOT NULL "
                               "ORDER BY source, json_extract(metadata, '$.chunk'), doc_id")
        for source, doc_id, content_hash, metadata in rows:
            metadata = json.loads(metadata)
            record = records.get(source)
            if record is None:
                records[source] = ([doc_id], {content_hash}, metadata)
                continue
            ids, hashes, agreed = record
            ids.append(doc_id)
            hashes.add(content_hash)
            for key in [k for k, v in agreed.items() if k not in metadata or metadata[k] != v]:
                del agreed[key]
        return {source: FileRecord(source, tuple(ids), next(iter(hashes)) if len(hashes) == 1 else None, agreed)
                for source, (ids, hashes, agreed) in records.items()}

    def sources(self) -> list[str]:
        """The distinct sources, sorted."""
        return [r[0] for r in self.db.execute(
            "SELECT DISTINCT source FROM documents WHERE source IS NOT NULL ORDER BY source")]

    def count_sources(self) -> int:
        """The number of distinct sources (files)."""
        return self.db.execute("SELECT count(DISTINCT source) FROM documents").fetchone()[0]

    def metadata_sum(self, key: str) -> int | float:
        """The sum of the numeric metadata value ``key`` over all documents (those without it count 0): e.g. the
        tokens indexed."""
        return self.db.execute("SELECT coalesce(sum(json_extract(metadata, ?)), 0) FROM documents",
                               (_json_path(key),)).fetchone()[0]

    def ids_of_sources(self, sources: Callable[[str], bool] | Collection[str]) -> list[str]:
        """Ids of the documents whose source is in ``sources``, or, for a function, for which it returns True (it is
        called once per distinct source: a path glob, a file type). In source then "chunk" order."""
        if isinstance(sources, str):
            raise IndexInputError("sources must be a collection of sources or a function, not one string")
        if callable(sources):
            wanted: Callable[[str], bool] = sources
        else:
            chosen = set(sources)
            wanted = chosen.__contains__
        decided: dict[str, bool] = {}
        out = []
        for doc_id, source in self.db.execute("SELECT doc_id, source FROM documents WHERE source IS NOT NULL "
                                              "ORDER BY source, json_extract(metadata, '$.chunk'), doc_id"):
            keep = decided.get(source)
            if keep is None:
                keep = decided[source] = bool(wanted(source))
            if keep:
                out.append(doc_id)
        return out

    def set_file_metadata(self, updates: Mapping[str, Mapping[str, Any]]) -> None:
        """Set metadata keys on every document of each source: ``{source: {"mtime_ns": ..., "size": ...}}`` (other
        keys are kept). One transaction; inside an index transaction on this thread, part of that index's commit."""
        changes = {source: dict(values) for source, values in updates.items()}
        if not changes:
            return

        def write(db: sqlite3.Connection) -> None:
            sources = list(changes)
            rows = []
            for start in range(0, len(sources), 500):
                chunk = sources[start:start + 500]
                for doc_id, source, metadata in db.execute(
                        f"SELECT doc_id, source, metadata FROM documents WHERE source IN "
                        f"({','.join('?' * len(chunk))})", chunk):
                    rows.append((json.dumps({**json.loads(metadata), **changes[source]}, ensure_ascii=False), doc_id))
            db.executemany("UPDATE documents SET metadata = ? WHERE doc_id = ?", rows)
        self._write(write)

    # small key/value settings (the index's kind, dimension, generation)
    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def set_meta(self, key: str, value: Any) -> None:
        row = (key, json.dumps(value))
        self._write(lambda db: db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", row))

    def data_version(self) -> int:
        """Changes when another connection commits (this thread's connection): a cheap check for whether to reload."""
        return self.db.execute("PRAGMA data_version").fetchone()[0]


def write_documents(db: sqlite3.Connection, documents: Sequence[Document]) -> None:
    """Insert or replace documents and their lexical rows, inside the caller's transaction: the one way documents
    are written (the store's ``put`` and an index's commit), so that the two sides never disagree. An id given
    twice keeps its last document."""
    documents = list({d.doc_id: d for d in documents}.values())
    db.executemany("INSERT OR REPLACE INTO documents VALUES (?, ?, ?, ?, ?, ?, ?)", [d.row() for d in documents])
    lexical.write_rows(db, [(d.doc_id, d.source, d.metadata, d.text) for d in documents])


def delete_documents(db: sqlite3.Connection, doc_ids: Sequence[str]) -> None:
    """Delete documents and their lexical rows (unknown ids are ignored), inside the caller's transaction."""
    db.executemany("DELETE FROM documents WHERE doc_id = ?", [(i,) for i in doc_ids])
    lexical.delete_rows(db, doc_ids)


def is_sql_filter(filter: Filter) -> bool:
    """A SQL predicate (with or without parameters), rather than None or a collection of ids: ``("lang = ?",
    ("en",))`` is SQL and its parameters, ``("a", "b")`` two ids (parameters are never a bare string)."""
    return isinstance(filter, str) or (isinstance(filter, tuple) and len(filter) == 2 and isinstance(filter[0], str)
                                       and not isinstance(filter[1], str))


def _json_path(key: str) -> str:
    """SQLite's JSON path of a top-level key (quoted, so that dots and spaces are part of the name)."""
    if not isinstance(key, str) or not key or '"' in key:
        raise IndexInputError(f"a metadata key must be a non-empty string without '\"', got {key!r}")
    return f'$."{key}"'
