"""The lexical side of the store (indexes/lexical.py): code-aware terms, FTS5 rows that follow every write of the
documents, BM25 equal to a reference implementation, filters, old stores gaining the table, verify()."""

from __future__ import annotations

import math
import sqlite3

import numpy as np
import pytest
from rank_bm25 import BM25Okapi

from indexes import Document, DocumentStore, FaissIndex, IndexCorruptError, IndexInputError, lexical


@pytest.mark.parametrize("text, expected", [
    ("getUserById", ["getuserbyid", "get", "user", "id"]),
    ("max_retries", ["max_retries", "max", "retries"]),
    ("HTTPException", ["httpexception", "http", "exception"]),
    ("utf8Decode(buf)", ["utf8decode", "utf", "8", "decode", "buf"]),
    ("__init__ self.MAX_SIZE", ["init", "self", "max_size", "max", "size"]),
    ("Where are the HTTP retries configured?", ["where", "http", "retries", "configured"]),
    ("x = a + 42", ["42"]),  # single letters and stop words dropped, numbers kept
    ("naïve Ärger данные 数据", ["naïve", "ärger", "данные", "数据"]),
])
def test_terms_split_identifiers_and_keep_them_whole(text, expected):
    assert lexical.terms(text) == expected


def test_path_terms_and_symbol_names():
    assert lexical.path_terms("src/http_client/RetryPolicy.py") == [
        "src", "http_client", "http", "client", "retrypolicy", "retry", "policy", "py"]
    assert lexical.symbol_names({"symbols": [["get", "method", 1, 2, "A"], ["get", "method", 4, 5, "B"], "Top"]}) == [
        "get", "Top"]
    assert lexical.fields("a/b.py", {"symbols": [["getUser", "function", 1, 3, None]]}, "return 1") == (
        "py", "getuser get user", "return 1")


def test_match_expression_is_an_or_of_distinct_quoted_terms():
    assert lexical.match_expression('getUser "quoted" OR NOT getUser') == '"getuser" OR "get" OR "user" OR "quoted"'
    assert lexical.match_expression("the a of ... !!") is None


CORPUS = {
    "d1": "the quick brown fox jumps over the lazy dog",
    "d2": "a fox and a hound hunt in the forest at dawn",
    "d3": "parsers tokenize source code into tokens before parsing",
    "d4": "the hound sleeps while the cat watches the forest birds",
    "d5": "quick sort and merge sort order the tokens of a list",
    "d6": "birds sing at dawn in the quiet forest by the river",
    "d7": "a river of code flows through the parser and the lexer",
    "d8": "dogs and cats and birds share the garden in spring",
}


def store_with(tmp_path, corpus) -> DocumentStore:
    store = DocumentStore(tmp_path / "store.sqlite")
    store.put([Document(doc_id, text=text) for doc_id, text in corpus.items()])
    return store


def test_bm25_equals_rank_bm25_on_fts5s_own_tokens(tmp_path):
    """FTS5's bm25() against rank_bm25's BM25Okapi (k1 1.2, b 0.75) fed the very tokens FTS5 indexed (its
    fts5vocab instance table: Porter stems): same scores for every query, over every matching document."""
    store = store_with(tmp_path, CORPUS)
    db = store.db
    db.execute("CREATE VIRTUAL TABLE temp.tokens USING fts5vocab(main, lexical, 'instance')")
    row_of = dict(db.execute("SELECT doc_id, id FROM lexical_ids"))
    ids = sorted(CORPUS)
    documents = [[t for (t,) in db.execute("SELECT term FROM tokens WHERE doc = ? ORDER BY col, offset", (row_of[i],))]
                 for i in ids]
    reference = BM25Okapi(documents, k1=1.2, b=0.75)
    for query in ["fox hound", "forest birds dawn", "parser tokens code", "quick sort", "garden"]:
        stems = {t for (t,) in db.execute("SELECT term FROM tokens")}
        query_stems = [s for s in stems if any(s == lexical_stem(db, w) for w in lexical.terms(query))]
        expected = reference.get_scores(query_stems)
        got = dict(store.lexical_search(query, k=100))
        assert set(got) == {i for i, score in zip(ids, expected) if score > 0}, query
        for doc_id, score in zip(ids, expected):
            if doc_id in got:
                assert got[doc_id] == pytest.approx(score, rel=1e-9, abs=1e-12), (query, doc_id)
    # every query term above is in fewer than half the documents: FTS5 and rank_bm25 only differ beyond that (idf <= 0)
    assert all(len(d) for d in documents)


def lexical_stem(db: sqlite3.Connection, word: str) -> str:
    """The stem FTS5's porter tokenizer gives ``word`` (through a scratch table with the same tokenizer)."""
    db.execute("CREATE VIRTUAL TABLE IF NOT EXISTS temp.stems USING fts5(w, "
               "tokenize = \"porter unicode61 remove_diacritics 2 tokenchars '_'\")")
    db.execute("CREATE VIRTUAL TABLE IF NOT EXISTS temp.stem_terms USING fts5vocab(temp, stems, 'row')")
    db.execute("DELETE FROM temp.stems")
    db.execute("INSERT INTO temp.stems (w) VALUES (?)", (word,))
    return db.execute("SELECT term FROM temp.stem_terms").fetchone()[0]


def test_fields_are_weighted_and_identifiers_match_either_way(tmp_path):
    store = DocumentStore(tmp_path / "store.sqlite")
    store.put([
        Document("def", source="src/users.py", text="def getUserById(user_id): return db[user_id]",
                 metadata={"symbols": [["getUserById", "function", 1, 1, None]]}),
        Document("call", source="src/views.py", text="user = getUserById(request.user_id)"),
        Document("path", source="src/retry_policy.py", text="DELAY = 3"),
        Document("other", source="src/misc.py", text="nothing relevant here at all"),
    ])
    assert {d for d, _ in store.lexical_search("getUserById", 10)} == {"def", "call"}
    assert {d for d, _ in store.lexical_search("get user by id", 10)} >= {"def", "call"}
    assert store.lexical_search("retry policy", 10)[0][0] == "path"  # found by its path alone
    plain = dict(store.lexical_search("getUserById", 10))
    weighted = dict(store.lexical_search("getUserById", 10, weights=(1.0, 5.0, 1.0)))
    assert weighted["def"] - weighted["call"] > plain["def"] - plain["call"]  # the symbols field's weight counts
    with pytest.raises(ValueError, match="one weight per field"):
        store.lexical_search("x1", 3, weights=(1.0,))
    # a field of weight 0 is not searched: the path alone no longer finds a document
    assert "path" not in {d for d, _ in store.lexical_search("retry policy", 10, weights=(0.0, 1.0, 1.0))}
    assert {d for d, _ in store.lexical_search("getUserById", 10, weights=(0.0, 0.0, 1.0))} == {"def", "call"}
    assert store.lexical_search("getUserById", 10, weights=(0.0, 0.0, 0.0)) == []


def test_an_id_given_twice_in_one_put_keeps_its_last_document(tmp_path):
    store = DocumentStore(tmp_path / "store.sqlite")
    store.put([Document("a", text="first words"), Document("b", text="other"), Document("a", text="second words")])
    assert [d.text for d in store.get(["a"])] == ["second words"]
    assert [d for d, _ in store.lexical_search("second", 5)] == ["a"] and store.lexical_search("first", 5) == []
    with store.read_transaction() as db:
        assert lexical.check(db) is None
    store.close()


def test_filters_restrict_lexical_hits(tmp_path):
    store = store_with(tmp_path, CORPUS)
    assert {d for d, _ in store.lexical_search("forest", 10)} == {"d2", "d4", "d6"}
    assert {d for d, _ in store.lexical_search("forest", 10, filter=["d4", "d6", "d1"])} == {"d4", "d6"}
    assert {d for d, _ in store.lexical_search("forest", 10, filter=("doc_id != ?", ["d2"]))} == {"d4", "d6"}
    assert store.lexical_search("forest", 10, filter=[]) == []
    with pytest.raises(IndexInputError, match="not a valid SQL predicate"):
        store.lexical_search("forest", 10, filter="no_such_column = 1")


def test_rows_follow_add_update_remove_compact(tmp_path):
    rng = np.random.default_rng(0)
    index = FaissIndex.create(tmp_path / "ix", 8)
    vectors = lambda n: rng.standard_normal((n, 8)).astype(np.float32)  # noqa: E731
    index.add(["a", "b", "c"], vectors(3), [Document("a", text="alpha shared"), Document("b", text="beta shared"),
                                             Document("c", text="gamma shared")])
    found = lambda query: {d for d, _ in index.store.lexical_search(query, 10)}  # noqa: E731
    assert found("shared") == {"a", "b", "c"} and found("beta") == {"b"}
    index.update(["b"], vectors(1), [Document("b", text="delta shared")])
    assert found("beta") == set() and found("delta") == {"b"}
    index.remove(["a"])
    assert found("alpha") == set() and found("shared") == {"b", "c"}
    with index.transaction():  # the store's own writes inside an index transaction join its commit
        index.store.put([Document("c", text="epsilon")])
        assert found("epsilon") == set()  # staged: invisible until the commit
    assert found("epsilon") == {"c"} and found("gamma") == set()
    index.compact()
    assert found("shared") == {"b"} and found("epsilon") == {"c"}
    index.verify()
    with index.store.read_transaction() as db:
        assert lexical.check(db) is None
        assert db.execute("SELECT count(*) FROM lexical").fetchone()[0] == len(index.store) == 2
    index.store.delete(["b"])
    assert found("delta") == set()
    index.close()


def test_verify_finds_a_lexical_table_out_of_step(tmp_path):
    index = FaissIndex.create(tmp_path / "ix", 4)
    index.add(["a", "b"], np.eye(2, 4, dtype=np.float32), [Document("a", text="one"), Document("b", text="two")])
    index.verify()
    with index.store.transaction() as db:
        db.execute("DELETE FROM lexical WHERE rowid = (SELECT id FROM lexical_ids WHERE doc_id = 'a')")
    with pytest.raises(IndexCorruptError, match="lexical table holds 1 rows"):
        index.verify()
    index.close()


def test_an_old_store_gains_its_lexical_rows_when_opened_for_writing(tmp_path):
    store = store_with(tmp_path, CORPUS)
    with store.transaction() as db:  # what a store written before the lexical side looks like
        db.execute("DROP TABLE lexical")
        db.execute("DROP TABLE lexical_ids")
        db.execute("DELETE FROM meta WHERE key = 'lexical_version'")
    store.close()
    reader = DocumentStore(tmp_path / "store.sqlite", readonly=True)
    assert not reader.lexical_ready
    with pytest.raises(IndexInputError, match="no lexical index yet"):
        reader.lexical_search("forest", 5)
    reader.close()
    writer = DocumentStore(tmp_path / "store.sqlite")
    assert writer.lexical_ready
    assert {d for d, _ in writer.lexical_search("forest", 10)} == {"d2", "d4", "d6"}
    writer.close()


def test_rows_are_rewritten_when_the_terms_change(tmp_path, monkeypatch):
    store_with(tmp_path, {"a": "getUserById"}).close()
    monkeypatch.setattr(lexical, "TERMS_VERSION", lexical.TERMS_VERSION + 1)
    monkeypatch.setattr(lexical, "terms", lambda text: [w.lower() + "zz" for w in text.split()])
    store = DocumentStore(tmp_path / "store.sqlite")
    assert store.get_meta("lexical_version") == lexical.TERMS_VERSION
    assert [d for d, _ in store.lexical_search("getUserById", 5)] == ["a"]
    assert store.db.execute("SELECT body FROM lexical").fetchone()[0] == "getuserbyidzz"
    store.close()


def test_idf_of_a_term_in_most_documents_is_floored_not_negative(tmp_path):
    """FTS5's idf: log((N - n + 0.5) / (n + 0.5)), floored at 1e-6 (a term in most documents ranks nothing)."""
    store = store_with(tmp_path, {f"d{i}": "common" + (" rare" if i == 0 else "") for i in range(6)})
    scores = dict(store.lexical_search("common rare", 10))
    assert len(scores) == 6 and max(scores, key=scores.get) == "d0"
    assert all(0 <= s < 1e-5 for d, s in scores.items() if d != "d0")
    length, average = 2, 7 / 6  # d0 holds two terms; the six documents seven
    expected = math.log((6 - 1 + 0.5) / 1.5) * 2.2 / (1 + 1.2 * (0.25 + 0.75 * length / average))
    assert scores["d0"] == pytest.approx(expected, abs=1e-5)
    store.close()
