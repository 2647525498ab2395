"""The lexical side of the store: an SQLite FTS5 table over the documents, scored by BM25, with code-aware terms.

Each document gets one row of three fields: ``path`` (its source's folders, file stem and extension), ``symbols``
(the names it defines: metadata "symbols", see ``symbol_names``) and ``body`` (its text). The rows are written and
deleted by the store in the same SQLite transaction as the documents themselves (``write_rows``/``delete_rows``), so a
commit holds both sides or neither, and an index's commit carries them with its vectors.

Terms (``terms``): every word of the text, lower-cased; an identifier is kept whole *and* split into its parts
(``getUserById`` -> getuserbyid get user id, ``max_retries`` -> max_retries max retries, ``utf8Decode`` -> utf8decode
utf 8 decode), so that a query names a symbol either way. The English stop words of Lucene's analyzer and single
letters are dropped (they are noise in prose and in code). FTS5's own tokenizer then applies the Porter stemmer
(``porter unicode61``, with ``_`` kept inside tokens so that a whole snake_case name stays one term).

BM25 is FTS5's ``bm25()``: k1 = 1.2, b = 0.75, idf = log((N - n + 0.5) / (n + 0.5)) (floored at 1e-6 for terms in
more than half the rows), with each field's term frequency multiplied by its weight and one length over all fields:
a single-field ("flat") BM25 with weighted fields. A query is the OR of its terms (any term may match).
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

TERMS_VERSION = 1  # bump when terms() or the table's tokenizer change: stores rebuild their rows on open
TABLE, IDS = "lexical", "lexical_ids"
SCHEMA = f"""
CREATE VIRTUAL TABLE IF NOT EXISTS {TABLE} USING fts5(path, symbols, body,
    tokenize = "porter unicode61 remove_diacritics 2 tokenchars '_'");
CREATE TABLE IF NOT EXISTS {IDS} (id INTEGER PRIMARY KEY, doc_id TEXT NOT NULL UNIQUE);
"""
FIELDS = ("path", "symbols", "body")
DEFAULT_WEIGHTS = (1.0, 1.0, 1.0)
MAX_QUERY_TERMS = 64  # a pasted file as a query: its first distinct terms are enough, and bound the query's cost
MAX_TERM_CHARS = 64  # longer "words" are hashes, base64 and minified code

# Lucene's English stop words (EnglishAnalyzer.ENGLISH_STOP_WORDS_SET), the analyzer behind the published BM25 figures
STOP_WORDS = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their then there these they "
    "this to was will with".split())
WORD = re.compile(r"\w+")
PART = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+|[^\W\d_]+")


def terms(text: str) -> list[str]:
    """The terms of ``text`` in order: each word lower-cased, and an identifier's parts after it (see the module)."""
    out: list[str] = []
    for match in WORD.finditer(text):
        word = match.group().strip("_")
        if not word or len(word) > MAX_TERM_CHARS:
            continue
        whole = word.lower()
        _keep(out, whole)
        if "_" in word or not (word.isalpha() and (word.islower() or word.isupper() or word.istitle())):
            parts = [p.lower() for piece in word.split("_") for p in PART.findall(piece)]
            if len(parts) > 1:
                for part in parts:
                    _keep(out, part)
    return out


def _keep(out: list[str], term: str) -> None:
    if term in STOP_WORDS or (len(term) == 1 and not term.isdigit()):
        return
    out.append(term)


def path_terms(source: str | None) -> list[str]:
    """The terms of a path: folder names, the file's stem and extension, each split like an identifier."""
    return terms(source.replace("/", " ").replace(".", " ")) if source else []


def symbol_names(metadata: dict[str, Any]) -> list[str]:
    """The names a document defines, each once, in order, from its metadata "symbols": a list of names, or of
    lists/tuples whose first item is the name (what the codebase indexer stores: [name, kind, start_line, end_line,
    parent], retrieval/codebase/symbols.py)."""
    names = []
    for item in metadata.get("symbols") or ():
        name = item if isinstance(item, str) else item[0] if isinstance(item, (list, tuple)) and item else None
        if isinstance(name, str):
            names.append(name)
    return list(dict.fromkeys(names))


def fields(source: str | None, metadata: dict[str, Any], text: str | None) -> tuple[str, str, str]:
    """The three field values stored for a document (terms joined by spaces)."""
    return (" ".join(path_terms(source)), " ".join(t for name in symbol_names(metadata) for t in terms(name)),
            " ".join(terms(text or "")))


def create(db: sqlite3.Connection) -> None:
    for statement in SCHEMA.strip().split(";"):
        if statement.strip():
            db.execute(statement)


def exists(db: sqlite3.Connection) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (IDS,)).fetchone() is not None


def write_rows(db: sqlite3.Connection, documents: Iterable[tuple[str, str | None, dict[str, Any], str | None]]) -> None:
    """Insert or replace the rows of ``(doc_id, source, metadata, text)``, inside the caller's transaction."""
    documents = list(documents)
    delete_rows(db, [doc_id for doc_id, *_ in documents])
    for doc_id, source, metadata, text in documents:
        row = db.execute(f"INSERT INTO {IDS} (doc_id) VALUES (?)", (doc_id,)).lastrowid
        db.execute(f"INSERT INTO {TABLE} (rowid, path, symbols, body) VALUES (?, ?, ?, ?)",
                   (row, *fields(source, metadata, text)))


def delete_rows(db: sqlite3.Connection, doc_ids: Sequence[str]) -> None:
    """Delete the rows of ``doc_ids`` (unknown ids are ignored), inside the caller's transaction."""
    for start in range(0, len(doc_ids), 500):
        chunk = list(doc_ids[start:start + 500])
        marks = ",".join("?" * len(chunk))
        db.execute(f"DELETE FROM {TABLE} WHERE rowid IN (SELECT id FROM {IDS} WHERE doc_id IN ({marks}))", chunk)
        db.execute(f"DELETE FROM {IDS} WHERE doc_id IN ({marks})", chunk)


def rebuild(db: sqlite3.Connection) -> None:
    """Drop and rewrite every row from the documents table (a store written before the lexical side, or by an
    older ``TERMS_VERSION``), inside the caller's transaction."""
    db.execute(f"DROP TABLE IF EXISTS {TABLE}")
    db.execute(f"DROP TABLE IF EXISTS {IDS}")
    create(db)
    rows = db.execute("SELECT doc_id, source, metadata, text FROM documents ORDER BY rowid")
    write_rows(db, ((doc_id, source, json.loads(metadata), text) for doc_id, source, metadata, text in rows.fetchall()))


def optimize(db: sqlite3.Connection) -> None:
    """Merge the FTS5 table's b-trees into one (what ``compact`` does for the vectors)."""
    db.execute(f"INSERT INTO {TABLE} ({TABLE}) VALUES ('optimize')")


def check(db: sqlite3.Connection) -> str | None:
    """None when the table is sound and holds exactly one row per document; else what is wrong."""
    try:
        db.execute(f"INSERT INTO {TABLE} ({TABLE}, rank) VALUES ('integrity-check', 1)")
    except sqlite3.OperationalError as error:
        if "locked" in str(error) or "busy" in str(error):
            raise  # a writer holds the database: not damage (the caller reports it as busy)
        return f"the lexical table fails FTS5's integrity check ({error})"
    except sqlite3.DatabaseError as error:
        return f"the lexical table fails FTS5's integrity check ({error})"
    documents = db.execute("SELECT count(*) FROM documents").fetchone()[0]
    ids = db.execute(f"SELECT count(*) FROM {IDS} JOIN documents USING (doc_id)").fetchone()[0]
    rows = db.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0]
    if not documents == ids == rows:
        return f"the lexical table holds {rows} rows ({ids} of known documents) for {documents} documents"
    return None


def match_expression(query: str) -> str | None:
    """The FTS5 query for ``query``: the OR of its distinct terms (None when it has none)."""
    distinct = list(dict.fromkeys(terms(query)))[:MAX_QUERY_TERMS]
    return " OR ".join(f'"{t}"' for t in distinct) or None


def search(db: sqlite3.Connection, query: str, k: int, where: str = "", params: Sequence[Any] = (),
           weights: Sequence[float] = DEFAULT_WEIGHTS) -> list[tuple[str, float]]:
    """The ``k`` best documents for ``query`` by BM25, best first, as (doc_id, score >= 0). ``where``: an extra SQL
    predicate over the joined ``documents`` table (the store's filters), with its ``params``. ``weights``: one per
    field; a field of weight 0 is left out of the match."""
    expression = match_expression(query)
    if expression is None or k < 1:
        return []
    if len(weights) != len(FIELDS):
        raise ValueError(f"one weight per field {FIELDS}, got {list(weights)}")
    searched = [field for field, weight in zip(FIELDS, weights) if weight > 0]
    if not searched:
        return []
    if len(searched) < len(FIELDS):  # a field of weight 0 is not searched at all (not matched with a score of 0)
        expression = f"{{{' '.join(searched)}}} : ({expression})"
    join = "JOIN documents USING (doc_id)" if where else ""
    sql = (f"SELECT doc_id, -bm25({TABLE}, ?, ?, ?) AS score FROM {TABLE} JOIN {IDS} ON {IDS}.id = {TABLE}.rowid "
           f"{join} WHERE {TABLE} MATCH ? {'AND (' + where + ')' if where else ''} "
           f"ORDER BY score DESC, doc_id LIMIT ?")
    return [(doc_id, float(score)) for doc_id, score in db.execute(sql, (*weights, expression, *params, k))]
