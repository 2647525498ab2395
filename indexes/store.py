"""The SQLite store: documents and their metadata, beside the vectors, in the same database file.

One database per index folder (``store.sqlite``) holds the documents and the index's own tables (which vector rows
belong to which document, which files make up the current generation), so that a single SQLite transaction commits
documents and vectors together. WAL mode lets readers keep reading while a writer commits.

A filter for search is either a SQL predicate over the ``documents`` table (with optional parameters), e.g.
``"source LIKE 'src/%' AND json_extract(metadata, '$.lang') = ?", ["python"]``, or a collection of document ids.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import IndexCorruptError, IndexInputError

SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    doc_id TEXT PRIMARY KEY, source TEXT, start_line INTEGER, end_line INTEGER, content_hash TEXT,
    metadata TEXT NOT NULL DEFAULT '{}', text TEXT);
CREATE INDEX IF NOT EXISTS documents_source ON documents(source);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
Filter = str | tuple[str, Sequence[Any]] | Iterable[str] | None


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


class DocumentStore:
    """Documents by id, in ``path`` (a SQLite file). Usable alone, and owned by every index for its folder."""

    def __init__(self, path: str | Path, readonly: bool = False):
        self.path = Path(path)
        try:
            uri = f"file:{self.path}?mode=ro" if readonly else f"file:{self.path}"
            self.db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=30)
            if not readonly:
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=FULL")  # a commit is on disk when it returns
                self.db.executescript(SCHEMA)
            self.db.execute("SELECT count(*) FROM documents").fetchone()
        except sqlite3.DatabaseError as error:
            raise IndexCorruptError(f"{self.path} is not a readable document store ({error})") from None
        self._depth = 0

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic commit (nested uses join the outer one). BEGIN IMMEDIATE: the write lock is taken up front."""
        if self._depth:
            self._depth += 1
            try:
                yield self.db
            finally:
                self._depth -= 1
            return
        self.db.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        else:
            self.db.execute("COMMIT")
        finally:
            self._depth = 0

    # documents
    def put(self, documents: Iterable[Document]) -> None:
        """Insert or replace documents by id."""
        with self.transaction() as db:
            db.executemany("INSERT OR REPLACE INTO documents VALUES (?, ?, ?, ?, ?, ?, ?)", [d.row() for d in documents])

    def get(self, doc_ids: Sequence[str]) -> list[Document | None]:
        """Documents in the order asked, None where an id is unknown."""
        found: dict[str, Document] = {}
        for start in range(0, len(doc_ids), 500):
            chunk = list(doc_ids[start:start + 500])
            rows = self.db.execute(f"SELECT * FROM documents WHERE doc_id IN ({','.join('?' * len(chunk))})", chunk)
            for row in rows:
                found[row[0]] = Document(row[0], row[1], row[2], row[3], row[4], json.loads(row[5]), row[6])
        return [found.get(i) for i in doc_ids]

    def delete(self, doc_ids: Iterable[str]) -> None:
        with self.transaction() as db:
            db.executemany("DELETE FROM documents WHERE doc_id = ?", [(i,) for i in doc_ids])

    def ids(self, filter: Filter = None) -> list[str]:
        """Ids of the documents matching ``filter`` (all when None)."""
        if filter is None:
            return [r[0] for r in self.db.execute("SELECT doc_id FROM documents ORDER BY doc_id")]
        if isinstance(filter, str) or (isinstance(filter, tuple) and len(filter) == 2 and isinstance(filter[0], str)):
            where, params = (filter, ()) if isinstance(filter, str) else filter
            try:
                return [r[0] for r in self.db.execute(f"SELECT doc_id FROM documents WHERE {where}", tuple(params))]
            except sqlite3.Error as error:
                raise IndexInputError(f"the filter {where!r} is not a valid SQL predicate over documents "
                                      f"(columns: doc_id, source, start_line, end_line, content_hash, metadata, "
                                      f"text): {error}") from None
        return list(filter)

    def __len__(self) -> int:
        return self.db.execute("SELECT count(*) FROM documents").fetchone()[0]

    def __contains__(self, doc_id: str) -> bool:
        return self.db.execute("SELECT 1 FROM documents WHERE doc_id = ?", (doc_id,)).fetchone() is not None

    # small key/value settings (the index's kind, dimension, generation)
    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def set_meta(self, key: str, value: Any) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    def data_version(self) -> int:
        """Changes when another connection commits: a cheap check for whether to reload."""
        return self.db.execute("PRAGMA data_version").fetchone()[0]
