"""The lexical side of the store: an inverted index in SQLite tables beside the documents, scored by BM25, with
code-aware terms.

Each document has three fields: ``path`` (its source's folders, file stem and extension), ``symbols`` (the names it
defines: metadata "symbols", see ``symbol_names``) and ``body`` (its text). Its rows are written and deleted by the
store in the same SQLite transaction as the document itself (``write_rows``/``delete_rows``), so a commit holds both
sides or neither, and an index's commit carries them with its vectors.

Terms (``terms``): every word of the text, lower-cased; an identifier is kept whole *and* split into its parts
(``getUserById`` -> getuserbyid get user id, ``max_retries`` -> max_retries max retries, ``utf8Decode`` -> utf8decode
utf 8 decode), so that a query names a symbol either way. The English stop words of Lucene's analyzer and single
letters are dropped (they are noise in prose and in code); diacritics are removed and the Porter stemmer (Snowball's
"porter", the algorithm of Lucene's PorterStemFilter) gives the indexed form (``index_terms``). A word longer than
``MAX_TERM_CHARS`` is not kept whole, but its parts are when it splits into words (a long test name); one that does
not (a hash, base64, minified code) gives nothing. Han, Hiragana, Katakana and Hangul runs, written without spaces,
give their overlapping character bigrams (``中文代码`` -> 中文 文代 代码, as Lucene's CJKBigramFilter), whatever their
length.

Why our own postings and not SQLite FTS5 (which this module used first): FTS5's ``bm25()`` has k1 = 1.2 and b = 0.75
built in, where the published BM25 figures use Lucene's (k1 0.9, b 0.4, idf log(1 + (N - n + 0.5) / (n + 0.5))), and
it scores every row that holds any query term one row at a time, where reading the query terms' posting lists and
scoring them with numpy is several times faster on a large index (README, "Hybrid search", for the figures).

Layout, as Lucene's: a write adds a *segment* (for each term and field, the rows holding it and their term
frequencies, two packed arrays per SQLite row); a delete removes only the document's id row, and its postings are
skipped until a merge rewrites them; segments of the same size class merge when ``MERGE_FACTOR`` of them pile up, and
``optimize`` (compaction) merges all. A document written again with the same path, symbols and text (a chunk whose
vector lands after its text) keeps its row and postings. Collection statistics (live rows, lengths) are cached per store and reloaded
when the ``generation`` token changes (every write sets a new random one, so a rolled-back write never aliases a
later commit).

BM25F (Robertson and Zaragoza's BM25 over fields): score(d) = sum over distinct query terms t of idf(t) * x / (k1 + x),
x = the sum over fields f of weight(f) * count(t, f) / (1 - b + b * len(d, f) / avg len(f)): each field's count is
normalized by that field's own length (a path or a list of defined names is short; a body is long), then weighted;
idf = log(1 + (N - n + 0.5) / (n + 0.5)) (Lucene's), n the live documents holding t in a searched field. With one
field this is Lucene's BM25 exactly. A query is the OR of its terms (any term may match).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sqlite3
import threading
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field as dataclass_field
from typing import Any

import numpy as np
import Stemmer

TERMS_VERSION = 4  # bump when terms(), index_terms() or the tables change: stores rebuild their rows on open
IDS, SEGMENTS, POSTINGS, GENERATION = "lexical_ids", "lexical_segments", "lexical_postings", "lexical_generation"
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {IDS} (id INTEGER PRIMARY KEY AUTOINCREMENT, doc_id TEXT NOT NULL UNIQUE,
    path_length INTEGER NOT NULL, symbols_length INTEGER NOT NULL, body_length INTEGER NOT NULL,
    digest INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS {SEGMENTS} (segment INTEGER PRIMARY KEY AUTOINCREMENT, postings INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS {POSTINGS} (term TEXT NOT NULL, field INTEGER NOT NULL, segment INTEGER NOT NULL,
    rows BLOB NOT NULL, counts BLOB NOT NULL, PRIMARY KEY (term, field, segment)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS {POSTINGS}_segment ON {POSTINGS} (segment);
CREATE TABLE IF NOT EXISTS {GENERATION} (token INTEGER NOT NULL);
"""
OLD_TABLES = ("lexical",)  # TERMS_VERSION 1: the FTS5 table
FIELDS = ("path", "symbols", "body")
DEFAULT_WEIGHTS = (1.0, 1.0, 1.0)
K1, B = 0.9, 0.4  # Lucene's BM25 as Pyserini runs it for its published BEIR figures
MAX_QUERY_TERMS = 64  # a pasted file as a query: its first distinct terms are enough, and bound the query's cost
MAX_TERM_CHARS = 64  # longer words are kept only as their parts, if they split into words (see _plain_terms)
WORDY_SHARE = 0.75
REBUILD_BATCH = 5000  # documents per segment when a store's rows are rewritten
MERGE_FACTOR = 8  # segments of one size class (a power of 8 postings) merge into one when this many exist
ROW, COUNT = np.dtype("<u4"), np.dtype("<u2")  # a posting: the document's row id and the term's count in the field

# Lucene's English stop words (EnglishAnalyzer.ENGLISH_STOP_WORDS_SET), the analyzer behind the published BM25 figures
STOP_WORDS = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their then there these they "
    "this to was will with".split())
WORD = re.compile(r"\w+")
# Han, Hiragana, Katakana and Hangul: the scripts Lucene's CJKBigramFilter makes bigrams of
CJK = re.compile("[\u1100-\u11ff\u3040-\u30ff\u3130-\u318f\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\ua960-\ua97f"
                 "\uac00-\ud7ff\uf900-\ufaff\uff66-\uff9f\U00020000-\U0003134f]+")
PART = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+|[^\W\d_]+")
_local = threading.local()  # a stemmer per thread (PyStemmer's objects are not thread-safe)
CACHE_WORDS = 200_000
_TERMS: dict[str, tuple[str, ...]] = {}  # word -> its terms
_STEMS: dict[str, str] = {}  # term -> its indexed form
_INDEXED: dict[str, tuple[str, ...]] = {}  # word -> its terms' indexed forms


def terms(text: str) -> list[str]:
    """The terms of ``text`` in order: each word lower-cased, and an identifier's parts after it (see the module)."""
    out: list[str] = []
    for word in WORD.findall(text):
        found = _TERMS.get(word)
        if found is None:
            found = _cache(_TERMS, word, _word_terms(word))
        out.extend(found)
    return out


def _word_terms(word: str) -> tuple[str, ...]:
    if CJK.search(word) is None:
        return _plain_terms(word)
    out: list[str] = []  # CJK text has no spaces: its runs give their character bigrams (a lone character: itself)
    start = 0
    for run in CJK.finditer(word):
        out += _plain_terms(word[start:run.start()])
        text = run.group()
        out += [text] if len(text) == 1 else [text[i:i + 2] for i in range(len(text) - 1)]
        start = run.end()
    out += _plain_terms(word[start:])
    return tuple(out)


def _plain_terms(word: str) -> tuple[str, ...]:
    word = word.strip("_")
    if not word:
        return ()
    out = [word.lower()] if len(word) <= MAX_TERM_CHARS else []
    if "_" in word or not (word.isalpha() and (word.islower() or word.isupper() or word.istitle())):
        parts = [p for piece in word.split("_") for p in PART.findall(piece)]
        if len(parts) > 1 and (len(word) <= MAX_TERM_CHARS or _has_words(parts)):
            out += [p.lower() for p in parts if len(p) <= MAX_TERM_CHARS]
    return tuple(t for t in out if t not in STOP_WORDS and (len(t) > 1 or t.isdigit()))


def _has_words(parts: list[str]) -> bool:
    """Whether an over-long identifier's parts are words (a long test name) rather than the shards of a hash or of
    base64: letter runs of 3 or more make up at least ``WORDY_SHARE`` of it (random base64 stays below 0.67, hex
    below 0.45)."""
    wordy = sum(len(p) for p in parts if len(p) >= 3 and p.isalpha())
    return wordy >= WORDY_SHARE * sum(map(len, parts))


def index_terms(words: list[str]) -> list[str]:
    """The indexed form of ``terms``' output: diacritics removed, then Porter's stem."""
    stems = {word: _STEMS.get(word) for word in words}
    missing = [word for word, stem in stems.items() if stem is None]
    if missing:
        stemmer = getattr(_local, "stemmer", None)
        if stemmer is None:
            stemmer = _local.stemmer = Stemmer.Stemmer("porter")
        for word, stem in zip(missing, stemmer.stemWords([w if w.isascii() else _fold(w) for w in missing])):
            stems[word] = _cache(_STEMS, word, stem)
    return [stems[word] for word in words]  # type: ignore[misc]


def _fold(word: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", word) if not unicodedata.combining(c))


def _cache(cache: dict[str, Any], key: str, value: Any) -> Any:
    """Remember ``value`` (code repeats its words: most are seen before); a full cache starts over."""
    if len(cache) >= CACHE_WORDS:
        cache.clear()
    cache[key] = value
    return value


def path_terms(source: str | None) -> list[str]:
    """The terms of a path: folder names, the file's stem and extension, each split like an identifier."""
    return terms(source.replace("/", " ").replace(".", " ")) if source else []


def symbol_names(metadata: dict[str, Any]) -> list[str]:
    """The names a document defines, each once, in order, from its metadata "symbols": a list of names, or of
    lists/tuples whose first item is the name (what the codebase indexer stores: [name, kind, start_line, end_line,
    parent], retrieval/codebase/symbols.py)."""
    symbols = metadata.get("symbols")
    if isinstance(symbols, str):
        symbols = [symbols]
    if not isinstance(symbols, (list, tuple)):  # a client's metadata may hold anything under "symbols"
        return []
    names = []
    for item in symbols:
        name = item if isinstance(item, str) else item[0] if isinstance(item, (list, tuple)) and item else None
        if isinstance(name, str):
            names.append(name)
    return list(dict.fromkeys(names))


def fields(source: str | None, metadata: dict[str, Any], text: str | None) -> tuple[list[str], list[str], list[str]]:
    """The indexed terms of a document's three fields."""
    return (index_terms(path_terms(source)), index_terms([t for name in symbol_names(metadata) for t in terms(name)]),
            indexed_terms(text or ""))


def indexed_terms(text: str) -> list[str]:
    """``index_terms(terms(text))``, a word at a time through a cache (the indexing path's hot loop)."""
    out: list[str] = []
    for word in WORD.findall(text):
        found = _INDEXED.get(word)
        if found is None:
            found = _cache(_INDEXED, word, tuple(index_terms(list(_word_terms(word)))))
        out.extend(found)
    return out


def query_terms(query: str) -> list[str]:
    """The distinct indexed terms of ``query``, in order, at most ``MAX_QUERY_TERMS``."""
    return list(dict.fromkeys(index_terms(terms(query))))[:MAX_QUERY_TERMS]


def create(db: sqlite3.Connection) -> None:
    for statement in SCHEMA.strip().split(";"):
        if statement.strip():
            db.execute(statement)
    if db.execute(f"SELECT count(*) FROM {GENERATION}").fetchone()[0] == 0:
        db.execute(f"INSERT INTO {GENERATION} VALUES (random())")


def exists(db: sqlite3.Connection) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (GENERATION,)).fetchone() is not None


def write_rows(db: sqlite3.Connection, documents: Iterable[tuple[str, str | None, dict[str, Any], str | None]]) -> None:
    """Insert or replace the rows of ``(doc_id, source, metadata, text)``, inside the caller's transaction: one new
    segment for them all (then merges, if a size class is full)."""
    changed = _changed(db, documents)
    delete_rows(db, [document[0] for document, _ in changed])
    if not changed:
        return
    last = db.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (IDS,)).fetchone()
    first = (last[0] if last else 0) + 1  # row ids are never reused (AUTOINCREMENT): a deleted one's postings linger
    vocabulary: dict[tuple[str, int], int] = {}
    keys: list[int] = []
    rows: list[int] = []
    counts: list[int] = []
    lengths = []
    for row, ((doc_id, source, metadata, text), digest) in enumerate(changed, start=first):
        values = fields(source, metadata, text)
        lengths.append((row, doc_id, *map(len, values), digest))
        for field, field_terms in enumerate(values):
            counted = Counter(field_terms)
            keys += [vocabulary.setdefault((term, field), len(vocabulary)) for term in counted]
            rows += [row] * len(counted)
            counts += counted.values()
    db.executemany(f"INSERT INTO {IDS} VALUES (?, ?, ?, ?, ?, ?)", lengths)
    if vocabulary:
        order = np.argsort(np.array(keys), kind="stable")  # grouped by (term, field), rows ascending within
        bounds = np.searchsorted(np.array(keys)[order], np.arange(len(vocabulary) + 1))
        sorted_rows = np.array(rows, ROW)[order]
        sorted_counts = np.minimum(np.array(counts)[order], np.iinfo(COUNT).max).astype(COUNT)
        _write_segment(db, ((term, field, sorted_rows[bounds[i]:bounds[i + 1]], sorted_counts[bounds[i]:bounds[i + 1]])
                            for (term, field), i in vocabulary.items()))
        _merge_full_classes(db)


def _changed(db: sqlite3.Connection, documents: Iterable[tuple[str, str | None, dict[str, Any], str | None]]
             ) -> list[tuple[tuple[str, str | None, dict[str, Any], str | None], int]]:
    """The documents whose indexed fields differ from their stored rows' (or that have none), with their digests: a
    document written again with only other metadata changed (a chunk's vector landing after its text) keeps its
    postings."""
    documents = list(documents)
    stored: dict[str, int] = {}
    for start in range(0, len(documents), 500):
        chunk = [doc_id for doc_id, *_ in documents[start:start + 500]]
        stored.update(db.execute(f"SELECT doc_id, digest FROM {IDS} WHERE doc_id IN ({','.join('?' * len(chunk))})",
                                 chunk).fetchall())
    digested = [(document, _digest(*document[1:])) for document in documents]
    return [(document, digest) for document, digest in digested if stored.get(document[0]) != digest]


def _digest(source: str | None, metadata: dict[str, Any], text: str | None) -> int:
    """A 63-bit hash of what a document's fields are made of."""
    hasher = hashlib.blake2b(digest_size=8)
    hasher.update(json.dumps([source, symbol_names(metadata)]).encode())
    hasher.update((text or "").encode("utf-8", "surrogatepass"))
    return int.from_bytes(hasher.digest(), "little") >> 1


def delete_rows(db: sqlite3.Connection, doc_ids: Sequence[str]) -> None:
    """Delete the rows of ``doc_ids`` (unknown ids are ignored), inside the caller's transaction. Their postings
    stay in their segments, skipped by searches (their row ids are never reused), until a merge drops them."""
    before = db.total_changes
    for start in range(0, len(doc_ids), 500):
        chunk = list(doc_ids[start:start + 500])
        db.execute(f"DELETE FROM {IDS} WHERE doc_id IN ({','.join('?' * len(chunk))})", chunk)
    if db.total_changes != before:
        db.execute(f"UPDATE {GENERATION} SET token = random()")


def _write_segment(db: sqlite3.Connection, postings: Iterable[tuple[str, int, np.ndarray, np.ndarray]]) -> None:
    segment = db.execute(f"INSERT INTO {SEGMENTS} (postings) VALUES (0)").lastrowid
    total = 0

    def values() -> Iterable[tuple[str, int, int, bytes, bytes]]:
        nonlocal total
        for term, field, rows, counts in postings:
            total += len(rows)
            yield term, field, segment, rows.tobytes(), counts.tobytes()

    db.executemany(f"INSERT INTO {POSTINGS} VALUES (?, ?, ?, ?, ?)", values())
    db.execute(f"UPDATE {SEGMENTS} SET postings = ? WHERE segment = ?", (total, segment))
    db.execute(f"UPDATE {GENERATION} SET token = random()")


def _merge_full_classes(db: sqlite3.Connection) -> None:
    """Merge the segments of any size class (postings in [8^c, 8^(c+1))) that holds ``MERGE_FACTOR`` of them: each
    posting is rewritten O(log n) times over an index's life, and a search reads O(log n) segments per term."""
    while True:
        classes: dict[int, list[int]] = {}
        for segment, postings in db.execute(f"SELECT segment, postings FROM {SEGMENTS} ORDER BY segment"):
            classes.setdefault(int(math.log(max(postings, 1), MERGE_FACTOR)), []).append(segment)
        full = [segments for segments in classes.values() if len(segments) >= MERGE_FACTOR]
        if not full:
            return
        _merge(db, full[0])


def _merge(db: sqlite3.Connection, segments: list[int]) -> None:
    """Rewrite ``segments`` as one, without the postings of deleted documents."""
    live = np.array([row for (row,) in db.execute(f"SELECT id FROM {IDS} ORDER BY id")], dtype=np.int64)
    marks = ",".join("?" * len(segments))
    found = db.execute(f"SELECT term, field, segment, rows, counts FROM {POSTINGS} WHERE segment IN ({marks})",
                       segments).fetchall()
    found.sort(key=lambda posting: posting[:3])
    db.execute(f"DELETE FROM {POSTINGS} WHERE segment IN ({marks})", segments)
    db.execute(f"DELETE FROM {SEGMENTS} WHERE segment IN ({marks})", segments)

    def merged() -> Iterable[tuple[str, int, np.ndarray, np.ndarray]]:
        start = 0
        while start < len(found):
            end = start
            while end < len(found) and found[end][:2] == found[start][:2]:
                end += 1
            rows = np.concatenate([np.frombuffer(p[3], ROW) for p in found[start:end]])
            counts = np.concatenate([np.frombuffer(p[4], COUNT) for p in found[start:end]])
            keep = np.isin(rows, live, assume_unique=True)
            if keep.any():
                yield found[start][0], found[start][1], rows[keep], counts[keep]
            start = end

    _write_segment(db, merged())


def rebuild(db: sqlite3.Connection) -> None:
    """Drop and rewrite every row from the documents table (a store written before the lexical side, or by an
    older ``TERMS_VERSION``), inside the caller's transaction."""
    for table in (*OLD_TABLES, IDS, SEGMENTS, POSTINGS, GENERATION):
        db.execute(f"DROP TABLE IF EXISTS {table}")
    create(db)
    rows = db.execute("SELECT doc_id, source, metadata, text FROM documents ORDER BY rowid")
    while batch := rows.fetchmany(REBUILD_BATCH):  # a segment per batch: the postings of a few thousand in memory
        write_rows(db, [(doc_id, source, json.loads(metadata), text) for doc_id, source, metadata, text in batch])


def optimize(db: sqlite3.Connection) -> None:
    """Merge every segment into one, dropping deleted documents' postings (what ``compact`` does for the vectors)."""
    segments = [segment for (segment,) in db.execute(f"SELECT segment FROM {SEGMENTS}")]
    if segments:
        _merge(db, segments)


def check(db: sqlite3.Connection) -> str | None:
    """None when the tables are sound and hold exactly one row per document; else what is wrong."""
    documents = db.execute("SELECT count(*) FROM documents").fetchone()[0]
    ids = db.execute(f"SELECT count(*) FROM {IDS} JOIN documents USING (doc_id)").fetchone()[0]
    rows = db.execute(f"SELECT count(*) FROM {IDS}").fetchone()[0]
    if not documents == ids == rows:
        return f"the lexical table holds {rows} rows ({ids} of known documents) for {documents} documents"
    broken = db.execute(f"SELECT count(*) FROM {POSTINGS} WHERE length(rows) != 2 * length(counts) OR length(rows) = 0 "
                        f"OR length(rows) % {ROW.itemsize} OR segment NOT IN (SELECT segment FROM {SEGMENTS})"
                        ).fetchone()[0]
    if broken:
        return f"the lexical table holds {broken} damaged posting lists"
    return None


@dataclass(frozen=True)
class Statistics:
    """What BM25F needs of the whole collection, at one generation: which row ids are live, their fields' lengths."""

    token: int
    live: np.ndarray  # bool, by row id
    lengths: np.ndarray  # float64 (field, row id): terms in the field (0 for dead rows)
    count: int
    average_lengths: np.ndarray  # per field, over the live documents (1 where a field is empty everywhere)
    _norms: dict[float, np.ndarray] = dataclass_field(default_factory=dict, compare=False)

    def inverse_norms(self, b: float) -> np.ndarray:
        """(field, row id): 1 / (1 - b + b * length / average length), the factor a count in the field is scaled by
        (computed once per b)."""
        norms = self._norms.get(b)
        if norms is None:
            norms = self._norms[b] = 1 / (1 - b + b * self.lengths / self.average_lengths[:, None])
        return norms


class StatisticsCache:
    """One store's ``Statistics``, reloaded when its generation token changes (shared by the store's threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._statistics: Statistics | None = None

    def get(self, db: sqlite3.Connection) -> Statistics:
        token = db.execute(f"SELECT token FROM {GENERATION}").fetchone()[0]
        statistics = self._statistics
        if statistics is not None and statistics.token == token:
            return statistics
        with self._lock:
            ids = np.array(db.execute(f"SELECT id, path_length, symbols_length, body_length FROM {IDS}").fetchall(),
                           dtype=np.int64).reshape(-1, 1 + len(FIELDS))
            size = int(ids[:, 0].max()) + 1 if len(ids) else 0
            live, lengths = np.zeros(size, bool), np.zeros((len(FIELDS), size), np.float64)
            live[ids[:, 0]], lengths[:, ids[:, 0]] = True, ids[:, 1:].T
            average = ids[:, 1:].mean(axis=0) if len(ids) else np.zeros(len(FIELDS))
            self._statistics = Statistics(token, live, lengths, len(ids), np.where(average > 0, average, 1.0))
            return self._statistics


def search(db: sqlite3.Connection, query: str, k: int, where: str = "", params: Sequence[Any] = (),
           weights: Sequence[float] = DEFAULT_WEIGHTS, k1: float = K1, b: float = B,
           cache: StatisticsCache | None = None) -> list[tuple[str, float]]:
    """The ``k`` best documents for ``query`` by BM25, best first (ties by id), as (doc_id, score > 0). ``where``: an
    extra SQL predicate over the joined ``documents`` table (the store's filters), with its ``params``. ``weights``:
    one per field; a field of weight 0 is not searched. Read it inside one read transaction (the store does)."""
    if len(weights) != len(FIELDS):
        raise ValueError(f"one weight per field {FIELDS}, got {list(weights)}")
    wanted = query_terms(query)
    searched = [field for field, weight in enumerate(weights) if weight > 0]
    if not wanted or not searched or k < 1:
        return []
    statistics = (cache or StatisticsCache()).get(db)
    rows, scores = _scores(db, wanted, searched, weights, statistics, k1, b)
    return _best(db, rows, scores, k, where, params)


def _scores(db: sqlite3.Connection, wanted: list[str], searched: list[int], weights: Sequence[float],
            statistics: Statistics, k1: float, b: float) -> tuple[np.ndarray, np.ndarray]:
    """(row ids, BM25F scores) of every live document holding a query term in a searched field."""
    postings: dict[str, list[tuple[int, bytes, bytes]]] = {}
    found = db.execute(f"SELECT term, field, rows, counts FROM {POSTINGS} WHERE term IN ({','.join('?' * len(wanted))}) "
                       f"AND field IN ({','.join(map(str, searched))})", wanted)
    for term, field, rows, counts in found:
        postings.setdefault(term, []).append((field, rows, counts))
    every_row, every_score = [], []
    inverse_norms = statistics.inverse_norms(b)
    for lists in postings.values():
        term_rows, term_frequency = [], []
        for field, blob, counts in lists:  # each field's count, weighted and normalized by the field's own length
            rows = np.frombuffer(blob, ROW).astype(np.int64)
            keep = rows < len(statistics.live)  # (a row beyond the statistics is from a later commit than they are)
            keep[keep] = statistics.live[rows[keep]]
            rows = rows[keep]
            term_rows.append(rows)
            term_frequency.append(weights[field] * np.frombuffer(counts, COUNT)[keep] * inverse_norms[field][rows])
        rows, frequency = np.concatenate(term_rows), np.concatenate(term_frequency)
        if len(lists) > 1:  # the term in several fields (or, mid-merge, segments) of one document: one frequency
            rows, inverse = np.unique(rows, return_inverse=True)
            frequency = np.bincount(inverse, frequency)
        if not len(rows):
            continue
        idf = math.log(1 + (statistics.count - len(rows) + 0.5) / (len(rows) + 0.5))
        every_row.append(rows)
        every_score.append(idf * frequency / (frequency + k1))
    if not every_row:
        return np.zeros(0, np.int64), np.zeros(0)
    total = np.bincount(np.concatenate(every_row), np.concatenate(every_score), minlength=len(statistics.live))
    rows = np.flatnonzero(total)
    return rows, total[rows]


def _best(db: sqlite3.Connection, rows: np.ndarray, scores: np.ndarray, k: int, where: str,
          params: Sequence[Any]) -> list[tuple[str, float]]:
    """The ``k`` best (doc_id, score) among the scored rows that pass ``where``: candidates are read best first in
    growing batches, until k have passed and the next one scores below the k-th (ties are ordered by doc_id)."""
    join = "JOIN documents USING (doc_id)" if where else ""
    found: list[tuple[str, float]] = []
    start, size = 0, max(2 * k, 64)
    order = _best_first(scores, size)
    while start < len(order):
        if start + size > len(order) < len(scores):
            order = _best_first(scores, len(scores))
        batch = order[start:start + size]
        start += len(batch)
        sql = (f"SELECT {IDS}.id, {IDS}.doc_id FROM {IDS} {join} WHERE {IDS}.id IN (SELECT value FROM json_each(?)) "
               f"{'AND (' + where + ')' if where else ''}")  # one parameter however many rows (SQLite's limit)
        doc_of = dict(db.execute(sql, (json.dumps(rows[batch].tolist()), *params)).fetchall())
        found += [(doc_of[row], float(score)) for row, score in zip(rows[batch].tolist(), scores[batch].tolist())
                  if row in doc_of]
        if len(found) >= k and (start >= len(order) or scores[order[start]] < sorted(s for _, s in found)[-k]):
            break
        size *= 4
    found.sort(key=lambda hit: (-hit[1], hit[0]))
    return found[:k]


def _best_first(scores: np.ndarray, n: int) -> np.ndarray:
    """The positions of the ``n`` highest scores, highest first (ties in position order; all of them past n)."""
    if n < len(scores):
        head = np.flatnonzero(scores >= np.partition(scores, len(scores) - n)[len(scores) - n])  # with every tie
        return head[np.argsort(-scores[head], kind="stable")]
    return np.argsort(-scores, kind="stable")
