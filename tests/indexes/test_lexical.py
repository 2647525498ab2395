"""The lexical side of the store (indexes/lexical.py): code-aware terms, postings that follow every write of the
documents, BM25 equal to a reference implementation, filters, old stores gaining the table, verify()."""

from __future__ import annotations

import math

import bm25s
import Stemmer
import numpy as np
import pytest

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
        ["py"], ["getus", "get", "user"], ["return", "1"])  # Porter stems of terms()


def test_query_terms_are_distinct_porter_stems_without_diacritics():
    assert lexical.query_terms('getUser "quoted" OR NOT getUser') == ["getus", "get", "user", "quot"]
    assert lexical.query_terms("Where are the HTTP retries configured?") == ["where", "http", "retri", "configur"]
    assert lexical.query_terms("naïve Ärger") == lexical.query_terms("naive arger") == ["naiv", "arger"]
    assert lexical.query_terms("the a of ... !!") == []


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
    tmp_path.mkdir(parents=True, exist_ok=True)
    store = DocumentStore(tmp_path / "store.sqlite")
    store.put([Document(doc_id, text=text) for doc_id, text in corpus.items()])
    return store


def flat_tokens(source, text) -> list[str]:
    """A document's indexed terms over all its fields, as one list (weights 1: what flat BM25 sees)."""
    return [t for field in lexical.fields(source, {}, text) for t in field]


def assert_equals_bm25s(store, corpus: dict[str, tuple[str | None, str]], queries) -> None:
    """Every query's scores equal bm25s's Lucene BM25 (k1 0.9, b 0.4) over the same tokens, for every document."""
    ids = sorted(corpus)
    reference = bm25s.BM25(method="lucene", k1=0.9, b=0.4)
    reference.index([flat_tokens(*corpus[i]) for i in ids], show_progress=False)
    for query in queries:
        expected = reference.get_scores(lexical.query_terms(query))
        got = dict(store.lexical_search(query, k=len(ids) + 5))
        assert set(got) == {i for i, score in zip(ids, expected) if score > 0}, query
        for doc_id, score in zip(ids, expected):
            if doc_id in got:
                assert got[doc_id] == pytest.approx(score, rel=1e-5), (query, doc_id)


def bm25f(corpus: dict[str, tuple[str | None, str]], query: str, k1: float = 0.9, b: float = 0.4) -> dict[str, float]:
    """BM25F written out plainly (weights 1): each field's count normalized by its own length, summed, saturated."""
    fields = {i: lexical.fields(source, {}, text) for i, (source, text) in corpus.items()}
    average = [sum(len(f[j]) for f in fields.values()) / len(fields) or 1.0 for j in range(3)]
    scores: dict[str, float] = {}
    for term in lexical.query_terms(query):
        x = {i: sum(f[j].count(term) / (1 - b + b * len(f[j]) / average[j]) for j in range(3)) for i, f in fields.items()}
        x = {i: v for i, v in x.items() if v > 0}
        idf = math.log(1 + (len(fields) - len(x) + 0.5) / (len(x) + 0.5))
        for i, v in x.items():
            scores[i] = scores.get(i, 0.0) + idf * v / (k1 + v)
    return scores


def test_bm25_equals_bm25s_lucene_on_our_tokens(tmp_path):
    store = store_with(tmp_path, CORPUS)
    assert_equals_bm25s(store, {i: (None, t) for i, t in CORPUS.items()},
                        ["fox hound", "forest birds dawn", "parser tokens code", "quick sort", "garden", "the forest"])
    store.close()


def assert_equals_bm25f(store, corpus: dict[str, tuple[str | None, str]], queries) -> None:
    for query in queries:
        expected = bm25f(corpus, query)
        got = dict(store.lexical_search(query, k=len(corpus) + 5))
        assert set(got) == set(expected), query
        for doc_id, score in expected.items():
            assert got[doc_id] == pytest.approx(score, rel=1e-9), (query, doc_id)


def test_segments_merge_and_skip_deleted_documents_exactly(tmp_path, monkeypatch):
    """Many small writes, replacements and deletes (segments piling up, merging, holding dead postings), then a
    compaction: after each phase the scores equal BM25F (path and body fields) over the live documents only."""
    monkeypatch.setattr(lexical, "MERGE_FACTOR", 3)
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(40)]
    make = lambda: " ".join(rng.choice(words, size=rng.integers(3, 15), p=zipf))  # noqa: E731
    zipf = 1 / np.arange(1, 41)
    zipf /= zipf.sum()
    store = DocumentStore(tmp_path / "store.sqlite")
    corpus: dict[str, tuple[str | None, str]] = {}
    for step in range(30):
        batch = {f"d{rng.integers(0, 60)}": (f"src/p{step % 4}.py", make()) for _ in range(rng.integers(1, 4))}
        store.put([Document(i, source=src, text=text) for i, (src, text) in batch.items()])
        corpus.update(batch)
        if step % 5 == 4:
            gone = [i for i in list(corpus) if rng.random() < 0.2]
            store.delete(gone)
            for i in gone:
                del corpus[i]
    segments = store.db.execute("SELECT count(*) FROM lexical_segments").fetchone()[0]
    assert 1 < segments < 30  # merged on the way (30 writes), not yet into one
    queries = ["w0 w5", "w1", "w30 w39 w2", "p1 w3", "w12 w13 w14"]
    assert_equals_bm25f(store, corpus, queries)
    with store.transaction() as db:
        lexical.optimize(db)
        assert lexical.check(db) is None
    assert store.db.execute("SELECT count(*) FROM lexical_segments").fetchone()[0] == 1
    posted = {r for (blob,) in store.db.execute("SELECT rows FROM lexical_postings")
              for r in np.frombuffer(blob, lexical.ROW).tolist()}
    assert posted == {r for (r,) in store.db.execute("SELECT id FROM lexical_ids")}  # no dead postings left
    assert_equals_bm25f(store, corpus, queries)
    store.close()


def test_a_document_rewritten_with_the_same_fields_keeps_its_postings(tmp_path):
    """A chunk written again with only other metadata changed (its vector landing after its text) is not re-indexed:
    same row, no new segment; a changed text, path or symbol is."""
    store = DocumentStore(tmp_path / "store.sqlite")
    store.put([Document("a", source="a.py", text="alpha beta", metadata={"pending": True})])
    state = lambda: store.db.execute("SELECT (SELECT id FROM lexical_ids), (SELECT count(*) FROM lexical_segments)"  # noqa: E731
                                     ).fetchone()
    before = state()
    store.put([Document("a", source="a.py", text="alpha beta", metadata={"pending": False})])
    assert state() == before
    for changed in (Document("a", source="a.py", text="alpha gamma"), Document("a", source="b.py", text="alpha gamma"),
                    Document("a", source="b.py", text="alpha gamma", metadata={"symbols": ["beta"]})):
        store.put([changed])
        assert state()[0] != before[0]
        before = state()
    assert [d for d, _ in store.lexical_search("beta", 5, weights=(0.0, 1.0, 0.0))] == ["a"]  # the symbol
    store.close()


def test_a_reader_sees_another_connections_commits(tmp_path):
    """The collection statistics a store caches follow commits made through another connection."""
    writer = store_with(tmp_path, {"a": "alpha beta", "b": "beta gamma"})
    reader = DocumentStore(tmp_path / "store.sqlite", readonly=True)
    before = dict(reader.lexical_search("beta", 5))
    writer.put([Document("c", text="delta"), Document("d", text="beta beta beta")])
    after = dict(reader.lexical_search("beta", 5))
    assert set(before) == {"a", "b"} and set(after) == {"a", "b", "d"}
    assert after["a"] != before["a"]  # N, the idf and the average length changed
    writer.delete(["d"])
    fresh = store_with(tmp_path / "fresh", {"a": "alpha beta", "b": "beta gamma", "c": "delta"})
    assert reader.lexical_search("beta", 5) == fresh.lexical_search("beta", 5)
    for store in (reader, writer, fresh):
        store.close()


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


def test_a_selective_filter_and_ties_give_the_unfiltered_ranking_filtered(tmp_path):
    """Candidates are checked against a filter best first in growing batches: with 400 matching documents, many tied,
    and a filter that passes one in twenty, the hits are the unfiltered ranking's filtered, in order."""
    rng = np.random.default_rng(1)
    corpus = {f"d{i:03d}": " ".join(rng.choice(["alpha", "beta", "gamma", "delta"], size=int(rng.integers(1, 4))))
              for i in range(400)}
    store = store_with(tmp_path, corpus)
    everything = store.lexical_search("alpha beta", 1000)
    assert len(everything) > 250 and len({s for _, s in everything}) < 30  # many ties
    assert everything == sorted(everything, key=lambda hit: (-hit[1], hit[0]))
    passes = lambda doc_id: int(doc_id[1:]) % 20 == 7  # noqa: E731
    expected = [hit for hit in everything if passes(hit[0])][:10]
    assert store.lexical_search("alpha beta", 10, filter=("CAST(substr(doc_id, 2) AS INTEGER) % 20 = 7", ())) == expected
    assert store.lexical_search("alpha beta", 10) == everything[:10]
    store.close()


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
        assert db.execute("SELECT count(*) FROM lexical_ids").fetchone()[0] == len(index.store) == 2
        assert db.execute("SELECT count(*) FROM lexical_segments").fetchone()[0] == 1  # compact merged them all
    index.store.delete(["b"])
    assert found("delta") == set()
    index.close()


def test_verify_finds_a_lexical_table_out_of_step(tmp_path):
    index = FaissIndex.create(tmp_path / "ix", 4)
    index.add(["a", "b"], np.eye(2, 4, dtype=np.float32), [Document("a", text="one"), Document("b", text="two")])
    index.verify()
    with index.store.transaction() as db:
        db.execute("DELETE FROM lexical_ids WHERE doc_id = 'a'")
    with pytest.raises(IndexCorruptError, match="lexical table holds 1 rows"):
        index.verify()
    with index.store.transaction() as db:
        db.execute("INSERT INTO lexical_ids (doc_id, path_length, symbols_length, body_length, digest) VALUES ('a', 0, 0, 1, 0)")
        index.verify()
        db.execute("UPDATE lexical_postings SET counts = x'01' WHERE term = 'two'")
    with pytest.raises(IndexCorruptError, match="1 damaged posting lists"):
        index.verify()
    index.close()


def test_an_old_store_gains_its_lexical_rows_when_opened_for_writing(tmp_path):
    store = store_with(tmp_path, CORPUS)
    with store.transaction() as db:  # what a store written before the lexical side looks like
        for table in ("lexical_ids", "lexical_segments", "lexical_postings", "lexical_generation"):
            db.execute(f"DROP TABLE {table}")
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
    monkeypatch.setattr(lexical, "_word_terms", lambda word: (word.lower() + "zz",))
    monkeypatch.setattr(lexical, "_TERMS", {})  # the word caches of the real terms
    monkeypatch.setattr(lexical, "_INDEXED", {})
    store = DocumentStore(tmp_path / "store.sqlite")
    assert store.get_meta("lexical_version") == lexical.TERMS_VERSION
    assert [d for d, _ in store.lexical_search("getUserById", 5)] == ["a"]
    assert [t for (t,) in store.db.execute("SELECT term FROM lexical_postings WHERE field = 2")] == ["getuserbyidzz"]
    store.close()


def test_a_store_of_the_fts5_version_is_rewritten_on_open(tmp_path):
    """TERMS_VERSION 1 kept an FTS5 table named "lexical": opening such a store for writing drops it and writes the
    postings (one transaction), and searches find what they found before."""
    store = store_with(tmp_path, CORPUS)
    with store.transaction() as db:
        for table in ("lexical_ids", "lexical_segments", "lexical_postings", "lexical_generation"):
            db.execute(f"DROP TABLE {table}")
        db.execute("CREATE VIRTUAL TABLE lexical USING fts5(path, symbols, body)")
        db.execute("CREATE TABLE lexical_ids (id INTEGER PRIMARY KEY, doc_id TEXT NOT NULL UNIQUE)")
        db.execute("UPDATE meta SET value = 1 WHERE key = 'lexical_version'")
    store.close()
    store = DocumentStore(tmp_path / "store.sqlite")
    assert store.db.execute("SELECT 1 FROM sqlite_master WHERE name = 'lexical'").fetchone() is None
    assert {d for d, _ in store.lexical_search("forest", 10)} == {"d2", "d4", "d6"}
    store.close()


def test_fields_are_normalized_by_their_own_lengths(tmp_path):
    """BM25F: a term in a short path field counts more than in a long one, whatever the bodies' lengths; with one
    field (no path, no symbols) the scores are BM25's (the bm25s test above)."""
    corpus = {"short": ("retry.py", "x1 " * 50), "long": ("retry/policy/backoff/jitter/helpers.py", "x1 " * 5),
              "other": ("misc.py", "retry once")}
    store = store_with(tmp_path, {})
    store.put([Document(i, source=src, text=text) for i, (src, text) in corpus.items()])
    scores = dict(store.lexical_search("retry", 5, weights=(1.0, 0.0, 0.0)))
    assert scores["short"] > scores["long"]  # with one length over all fields, "long" (5 body words) would win
    assert_equals_bm25f(store, corpus, ["retry", "retry policy x1", "helpers once"])
    store.close()


def test_lucene_idf_ranks_a_term_in_every_document_a_little(tmp_path):
    """Lucene's idf, log(1 + (N - n + 0.5) / (n + 0.5)), is positive even for a term in every document."""
    store = store_with(tmp_path, {f"d{i}": "common" + (" rare" if i == 0 else "") for i in range(6)})
    scores = dict(store.lexical_search("common rare", 10))
    assert len(scores) == 6 and max(scores, key=scores.get) == "d0"
    average = 7 / 6  # d0 holds two terms, the others one
    common = lambda length: math.log(1 + 0.5 / 6.5) / (1 + 0.9 * (0.6 + 0.4 * length / average))  # noqa: E731
    rare = math.log(1 + 5.5 / 1.5) / (1 + 0.9 * (0.6 + 0.4 * 2 / average))
    assert scores["d1"] == pytest.approx(common(1)) and scores["d0"] == pytest.approx(common(2) + rare)
    store.close()


def test_the_word_caches_starting_over_mid_text_change_nothing(monkeypatch):
    """The stem and term caches are cleared when full, even in the middle of a text: the terms are the stemmer's."""
    monkeypatch.setattr(lexical, "CACHE_WORDS", 50)
    monkeypatch.setattr(lexical, "_STEMS", {})
    monkeypatch.setattr(lexical, "_INDEXED", {})
    stemmer = Stemmer.Stemmer("porter")
    rng = np.random.default_rng(0)
    words = ["".join(rng.choice(list("aeioubcdfglmnrst"), size=int(rng.integers(4, 9)))) + str(rng.choice(
        ["ing", "ed", "s", "ation", ""])) for _ in range(500)]
    for _ in range(5):
        rng.shuffle(words)
        assert lexical.index_terms(words) == stemmer.stemWords(words)
        assert lexical.indexed_terms(" ".join(words)) == stemmer.stemWords(
            [w for w in words if w not in lexical.STOP_WORDS])


LONG_SNAKE = "test_a_search_for_a_long_snake_case_test_name_finds_its_definition_by_parts"
LONG_CAMEL = "testThatALongCamelCaseFunctionNameIsStillFoundByTheWordsItIsMadeOf"
LONG_HASH = "d41d8cd98f00b204e9800998ecf8427e5d41402abc4b2a76b9719d911017c592ae41e4649b934ca495991b7852b855"


def test_an_overlong_identifier_keeps_its_parts_and_a_hash_gives_nothing():
    """Words over MAX_TERM_CHARS are not kept whole, but one that splits into words still gives its parts, in the
    body, the defined names and the query; a hash (no words in it) gives nothing."""
    assert len(LONG_SNAKE) > lexical.MAX_TERM_CHARS and len(LONG_CAMEL) > lexical.MAX_TERM_CHARS
    assert lexical.terms(LONG_SNAKE) == ["test", "search", "long", "snake", "case", "test", "name", "finds", "its",
                                         "definition", "parts"]
    assert lexical.terms(f"def {LONG_CAMEL}():") == ["def", "test", "long", "camel", "case", "function", "name",
                                                     "still", "found", "words", "made"]
    assert lexical.query_terms(LONG_CAMEL)[:4] == ["test", "long", "camel", "case"]
    assert lexical.fields(None, {"symbols": [[LONG_SNAKE, "function", 1, 2, None]]}, "")[1][:3] == [
        "test", "search", "long"]
    assert lexical.terms(LONG_HASH) == [] and lexical.query_terms(LONG_HASH) == []
    assert lexical.terms("QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0NTY3ODk") == []
    assert lexical.terms("short_name " + "x" * 65) == ["short_name", "short", "name"]  # the cap still applies


def test_a_search_for_a_long_test_name_finds_it(tmp_path):
    corpus = {"tests": f"def {LONG_SNAKE}(tmp_path):\n    assert index(tmp_path)\n",
              "camel": f"function {LONG_CAMEL}() {{ return 1; }}",
              "other": "def test_something_else(tmp_path):\n    assert search(tmp_path)\n"}
    store = store_with(tmp_path, corpus)
    assert store.lexical_search(LONG_SNAKE, 3)[0][0] == "tests"
    assert store.lexical_search(LONG_CAMEL, 3)[0][0] == "camel"
    store.close()


def test_a_store_of_the_previous_terms_version_is_rewritten(tmp_path):
    """TERMS_VERSION 3 dropped over-long identifiers whole: its stores are rewritten on open and find them."""
    store = store_with(tmp_path, {"tests": f"def {LONG_SNAKE}():\n    pass\n"})
    with store.transaction() as db:  # what version 3 wrote: no postings for the long name's parts
        db.execute("DELETE FROM lexical_postings WHERE term != 'def' AND term != 'pass'")
        db.execute("INSERT OR REPLACE INTO meta VALUES ('lexical_version', 3)")
    store.close()
    store = DocumentStore(tmp_path / "store.sqlite")
    assert [d for d, _ in store.lexical_search(LONG_SNAKE, 3)] == ["tests"]
    store.close()


def test_cjk_runs_give_bigrams_so_a_word_inside_a_run_matches(tmp_path):
    """Chinese and Japanese are written without spaces: a run gives its character bigrams (Lucene's
    CJKBigramFilter), however long, and a query of words found inside the run matches it."""
    assert lexical.terms("中文代码搜索") == ["中文", "文代", "代码", "码搜", "搜索"]
    assert lexical.terms("検索エンジン 字") == ["検索", "索エ", "エン", "ンジ", "ジン", "字"]
    assert lexical.terms("get中文Name") == ["get", "中文", "name"]
    long_run = "这是一个非常长的中文句子" * 8  # over MAX_TERM_CHARS: bigrams are exempt from the cap
    assert "中文" in lexical.terms(long_run)
    corpus = {"zh": "# 中文代码搜索工具的说明\n", "ja": "# 検索エンジンの説明\n", "en": "# code search tool\n"}
    store = store_with(tmp_path, corpus)
    assert [d for d, _ in store.lexical_search("代码 搜索", 3)] == ["zh"]
    assert [d for d, _ in store.lexical_search("エンジン", 3)] == ["ja"]
    store.close()


def test_many_candidates_need_no_more_sql_variables_than_sqlite_allows():
    """_best reads the candidates' ids as one JSON parameter: a large k, or a selective filter that sends the batches
    past 999 candidates, works where SQLite allows only 999 variables (its old default limit)."""
    import json
    import sqlite3

    db = sqlite3.connect(":memory:")
    db.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)
    db.execute("CREATE TABLE documents (doc_id TEXT PRIMARY KEY, source TEXT, metadata TEXT, text TEXT)")
    lexical.create(db)
    docs = [(f"d{i:04d}", None, {}, f"common value {i}") for i in range(3000)]
    db.executemany("INSERT INTO documents VALUES (?, ?, ?, ?)", [(d, s, json.dumps(m), t) for d, s, m, t in docs])
    lexical.write_rows(db, docs)
    assert len(lexical.search(db, "common value", 2000)) == 2000
    found = lexical.search(db, "common value", 10, "doc_id IN (?, ?)", ("d0005", "d2999"))
    assert sorted(d for d, _ in found) == ["d0005", "d2999"]
