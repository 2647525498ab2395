"""Hybrid search: fusion (retrieval/fusion.py), the code-aware rules (codebase/ranking.py), hit spans
(codebase/spans.py), and ``Retriever.search(mode=...)`` / ``mret search --mode`` over a real index."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from indexes import Document
from retrieval.codebase.ranking import Rules, is_secondary, queried_names, rerank
from retrieval.codebase.spans import MAX_SPAN_LINES, best_span
from retrieval.fusion import fuse
from support import TOKENIZER_DIR, dense_model_folder, long_chunk, single_torch_thread


# ----- fusion
def test_rrf_sums_reciprocal_ranks_and_a_lexical_only_hit_can_win():
    semantic = [("a", 0.9), ("b", 0.8), ("c", 0.7)]
    lexical = [("x", 12.0), ("b", 3.0)]
    fused = fuse(semantic, lexical, k=10, method="rrf", lexical_weight=1.0)
    scores = dict(fused)
    assert scores["b"] == pytest.approx(1 / 62 + 1 / 62) and scores["x"] == pytest.approx(1 / 61)
    assert [d for d, _ in fused] == ["b", "a", "x", "c"]  # a (1/61) before x (1/61): semantic first among ties
    assert [d for d, _ in fuse(semantic, lexical, k=10, method="rrf", lexical_weight=2.0)][:2] == ["b", "x"]
    assert fuse(semantic, [], k=2, method="rrf") == [("a", pytest.approx(1 / 61)), ("b", pytest.approx(1 / 62))]


def test_blend_normalizes_each_list_and_is_the_default_with_lexical_weight_2():
    fused = dict(fuse([("a", 0.9), ("b", 0.5)], [("b", 30.0), ("c", 10.0)], k=3, method="blend", lexical_weight=1.0))
    assert fused == {"a": pytest.approx(1.0), "b": pytest.approx(1.0), "c": pytest.approx(0.0)}
    assert dict(fuse([("a", 0.9), ("b", 0.5)], [("b", 30.0), ("c", 10.0)], k=3)) == {
        "b": pytest.approx(2.0), "a": pytest.approx(1.0), "c": pytest.approx(0.0)}
    with pytest.raises(ValueError, match="rrf or blend"):
        fuse([], [], k=1, method="max")


# ----- the code-aware rules, each on and off
def doc(doc_id: str, source: str, symbols=(), text: str = "") -> Document:
    return Document(doc_id, source=source, start_line=1, end_line=max(1, text.count("\n") + 1), text=text,
                    metadata={"symbols": [list(s) for s in symbols]})


def order(query: str, candidates, rules: Rules, k: int = 10) -> list[str]:
    return [d.doc_id for d, _ in rerank(query, candidates, rules, k)]


def test_queried_names_are_identifier_shaped_words_or_a_single_word():
    assert queried_names("where is getUserById called") == {"getuserbyid"}
    assert queried_names("HTTPAdapter.send") == {"send"}
    assert queried_names("max_retries default") == {"max_retries"}
    assert queried_names("retries") == {"retries"}
    assert queried_names("how are retries configured") == set()


def test_the_definition_of_a_queried_symbol_comes_first():
    caller = doc("caller", "src/views.py", text="user = getUserById(uid)")
    definer = doc("definer", "src/users.py", symbols=[("getUserById", "function", 1, 3, None)])
    candidates = [(caller, 1.0), (definer, 0.7)]
    assert order("getUserById", candidates, Rules()) == ["definer", "caller"]
    assert order("getUserById", candidates, Rules(definitions=False)) == ["caller", "definer"]
    assert order("fetch the user row", candidates, Rules()) == ["caller", "definer"]  # no name asked for


def test_tests_and_vendored_files_are_pushed_down_unless_asked_for():
    assert is_secondary("tests/test_http.py") and is_secondary("pkg/vendor/six.py") and is_secondary("a/b.test.js")
    assert is_secondary("src/foo_test.go") and not is_secondary("src/testing_utils_real.py".replace("testing_", ""))
    test_file = doc("test", "tests/test_retry.py")
    source = doc("source", "src/retry.py")
    candidates = [(test_file, 1.0), (source, 0.8)]
    assert order("retry backoff", candidates, Rules(path_match=False)) == ["source", "test"]
    assert order("retry backoff", candidates, Rules(path_match=False, demote_tests=False)) == ["test", "source"]
    assert order("retry backoff test", candidates, Rules(path_match=False)) == ["test", "source"]


def test_every_definition_of_a_queried_name_comes_before_every_use():
    """The reviewer's edge cases: a definition at the bottom of the scores (a tie with a use at the same value before
    the fix), one beaten by a use's path bonus, and definitions in demoted files; those rank below the other
    definitions but still above every use."""
    user = doc("user", "src/app.py")
    low = doc("low", "src/retry.py", symbols=[("backoff_delay", "function", 1, 3, None)])
    assert order("backoff_delay", [(user, 1.0), (low, 0.0)], Rules()) == ["low", "user"]
    named = doc("named", "src/backoff_delay.py")  # a use whose file the query names: +PATH_BONUS
    assert order("backoff_delay", [(named, 1.0), (low, 0.05)], Rules()) == ["low", "named"]
    in_tests = doc("in_tests", "tests/conftest.py", symbols=[("make_client", "function", 1, 3, None)])
    assert order("make_client", [(user, 1.0), (in_tests, 0.6)], Rules()) == ["in_tests", "user"]
    vendored = doc("vendored", "third_party/six.py", symbols=[("add_metaclass", "function", 1, 3, None)])
    assert order("add_metaclass", [(user, 1.0), (vendored, 0.0)], Rules()) == ["vendored", "user"]
    source_def = doc("source_def", "src/client.py", symbols=[("make_client", "function", 1, 3, None)])
    candidates = [(in_tests, 1.0), (named, 0.9), (source_def, 0.0)]
    assert order("make_client", candidates, Rules()) == ["source_def", "in_tests", "named"]
    assert order("make_client tests", candidates, Rules()) == ["in_tests", "source_def", "named"]  # not demoted
    values = [value for _, value in rerank("make_client", candidates, Rules(), 5)]
    assert values == sorted(values, reverse=True)  # the reported values follow the order


@pytest.mark.parametrize("query", ["retry benchmarks", "retry mocks", "retry demos", "retry specs", "retry tests",
                                   "retry fixtures", "retry examples", "retry benches"])
def test_a_plural_query_word_asks_for_tests_and_examples_too(query):
    for path in ("bench/retry.py", "tests/retry.py", "demos/retry.py", "spec/retry.py", "examples/retry.py"):
        candidates = [(doc("secondary", path), 1.0), (doc("source", "src/backoff.py"), 0.8)]
        assert order(query, candidates, Rules(path_match=False)) == ["secondary", "source"]
        assert order("retry policy", candidates, Rules(path_match=False)) == ["source", "secondary"]


def test_a_file_named_by_the_query_is_lifted():
    named = doc("named", "src/retry_policy.py")
    other = doc("other", "src/client.py")
    candidates = [(other, 1.0), (named, 0.95)]
    assert order("retry policy", candidates, Rules()) == ["named", "other"]
    assert order("retry policy", candidates, Rules(path_match=False)) == ["other", "named"]


def test_at_most_n_chunks_of_one_file_in_the_top():
    long_file = [(doc(f"long#{i}", "src/long.py"), 1.0 - i / 100) for i in range(6)]
    others = [(doc(f"o{i}", f"src/o{i}.py"), 0.5 - i / 100) for i in range(3)]
    candidates = long_file + others
    top = order("anything at all", candidates, Rules(per_file=2), k=5)
    assert top == ["long#0", "long#1", "o0", "o1", "o2"]
    assert order("anything at all", candidates, Rules(per_file=0), k=5) == [f"long#{i}" for i in range(5)]
    assert order("anything at all", candidates[:3], Rules(per_file=2), k=5) == ["long#0", "long#1", "long#2"]


def test_with_every_rule_off_the_fused_ranking_is_kept_as_it_is():
    candidates = [(doc("t", "tests/test_a.py"), 0.9), (doc("a", "a.py", [("a", "function", 1, 1, None)]), -0.2)]
    assert rerank("a", candidates, Rules.off(), 5) == candidates


# ----- spans
def test_span_is_the_queried_definition_or_the_best_matching_part():
    chunk = long_chunk()
    assert best_span(chunk, "parse_header") == (110, 112)
    assert best_span(chunk, "exponential backoff schedule for a retry") == (210, 212)
    start, end = best_span(chunk, "nothing in common whatsoever")
    assert (start, end) == (11, 11 + MAX_SPAN_LINES - 1)
    no_symbols = Document("x", source="x.txt", start_line=1, end_line=300, text=chunk.text, metadata={})
    start, end = best_span(no_symbols, "backoff schedule")
    assert start <= 201 <= 203 <= end and end - start + 1 <= MAX_SPAN_LINES
    short = Document("s", source="s.py", start_line=5, end_line=30, text="\n".join(["x"] * 26), metadata={})
    assert best_span(short, "anything") == (5, 30)


# ----- Retriever and CLI over a real (tiny random model) index
pytestmark = pytest.mark.skipif(not (TOKENIZER_DIR / "tokenizer.json").exists(),
                                reason=f"the ModernBERT tokenizer is not at {TOKENIZER_DIR}")

TREE = {f"pkg/module_{i}.py": f"def helper_{i}(value):\n    return value * {i} + len(str(value))\n" for i in range(12)}
TREE["pkg/frobnicate.py"] = "def zqxFrobnicateWidget(widget):\n    widget.spin()\n    return widget\n"
TREE["tests/test_frob.py"] = "from pkg.frobnicate import zqxFrobnicateWidget\n\ndef test_it():\n    zqxFrobnicateWidget(1)\n"


def write_tree(root: Path) -> Path:
    for path, text in TREE.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    return root


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    from retrieval.codebase.retriever import Retriever

    gen = single_torch_thread()
    next(gen)
    folder = tmp_path_factory.mktemp("hybrid")
    model = dense_model_folder(folder / "model")
    root = write_tree(folder / "tree")
    with Retriever(root, model=str(model), kind="dense", max_length=128, show_progress=False) as retriever:
        retriever.index()
    yield root
    next(gen, None)


def test_hybrid_finds_a_symbol_that_the_embeddings_miss(indexed):
    from retrieval.codebase.retriever import Retriever, RetrieverError

    with Retriever.open(indexed / ".mret") as retriever:
        query = "zqxFrobnicateWidget"
        semantic = [h.path for h in retriever.search(query, k=20, mode="semantic", rules=Rules.off())]
        assert semantic.index("pkg/frobnicate.py") > 0  # the random model does not rank it first
        lexical = [h.path for h in retriever.search(query, k=5, mode="lexical", rules=Rules.off())]
        assert set(lexical) == {"pkg/frobnicate.py", "tests/test_frob.py"}  # only the two files that name it
        hybrid = retriever.search(query, k=5)
        assert hybrid[0].path == "pkg/frobnicate.py" and hybrid[0].start_line == 1
        assert "tests/test_frob.py" in [h.path for h in hybrid]
        assert retriever.search(query, k=3, mode="lexical", path_glob="tests/**")[0].path == "tests/test_frob.py"
        with pytest.raises(RetrieverError, match="mode must be one of"):
            retriever.search(query, mode="fuzzy")


def test_cli_search_mode_and_full(indexed):
    from retrieval.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["search", "zqxFrobnicateWidget", "--index-dir", str(indexed / ".mret"), "--mode",
                                 "lexical", "--json", "-k", "3"])
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)
    assert [h["path"] for h in hits][:1] == ["pkg/frobnicate.py"] and set(hits[0]) == {
        "path", "start_line", "end_line", "score", "snippet"}
    full = runner.invoke(app, ["search", "zqxFrobnicateWidget", "--index-dir", str(indexed / ".mret"), "--full",
                               "-k", "1"])
    assert full.exit_code == 0 and "widget.spin()" in full.stdout and "pkg/frobnicate.py:1-3" in full.stdout
    bad = runner.invoke(app, ["search", "x", "--index-dir", str(indexed / ".mret"), "--mode", "fuzzy"])
    assert bad.exit_code == 2
    negative = runner.invoke(app, ["search", "x", "--index-dir", str(indexed / ".mret"), "--per-file", "-1"])
    assert negative.exit_code == 2 and "--per-file" in negative.output


def test_texts_land_before_vectors_and_pending_chunks_are_searchable(tmp_path, monkeypatch):
    """A run stopped after its first pass (the texts) leaves every file searchable lexically and in hybrid mode,
    status counts the chunks still waiting for vectors, and the next run encodes exactly those without reading the
    files again."""
    from retrieval.codebase import indexing
    from retrieval.codebase.retriever import Retriever

    gen = single_torch_thread()
    next(gen)
    model = dense_model_folder(tmp_path / "model")
    root = write_tree(tmp_path / "tree")

    def stopped(self):
        raise KeyboardInterrupt  # what a kill between the two passes leaves

    monkeypatch.setattr(indexing._Run, "encode_pending", stopped)
    with Retriever(root, model=str(model), kind="dense", max_length=128, show_progress=False) as retriever:
        with pytest.raises(KeyboardInterrupt):
            retriever.index()
    monkeypatch.undo()
    with Retriever.open(root / ".mret") as retriever:
        status = retriever.status()
        assert status["chunks"] == status["pending_chunks"] == len(TREE) and len(retriever.vectors) == 0
        assert retriever.remove("pkg/module_0.py") == (1, 1)  # a file whose chunks wait for vectors
        assert retriever.status()["pending_chunks"] == len(TREE) - 1
        (root / "pkg" / "module_0.py").unlink()
        assert retriever.search("zqxFrobnicateWidget", k=3)[0].path == "pkg/frobnicate.py"  # lexical only, so far
        assert retriever.search("zqxFrobnicateWidget", k=3, mode="semantic") == []
    read = []
    original = indexing.read_source
    monkeypatch.setattr(indexing, "read_source", lambda *a: read.append(a[0].path) or original(*a))
    with Retriever(root, show_progress=False) as retriever:
        summary = retriever.index()
        assert read == [] and summary.encoded_files == len(TREE) - 1 and summary.encoded_chunks == len(TREE) - 1
        assert retriever.status()["pending_chunks"] == 0 and len(retriever.vectors) == len(TREE) - 1
        assert "pending" not in retriever.vectors.documents(["pkg/frobnicate.py#0"])[0].metadata
        assert retriever.search("zqxFrobnicateWidget", k=3)[0].path == "pkg/frobnicate.py"
    next(gen, None)


def test_a_chunk_rewritten_by_another_writer_while_it_is_encoded_keeps_the_new_text(tmp_path, monkeypatch):
    """Pending chunks are read, encoded (slow), then committed: one that another writer replaced meanwhile is left
    to the next run instead of being overwritten with the old text and its vector."""
    from indexes import Document
    from retrieval.codebase import indexing
    from retrieval.codebase.retriever import Retriever

    gen = single_torch_thread()
    next(gen)
    model = dense_model_folder(tmp_path / "model")
    root = write_tree(tmp_path / "tree")
    original = indexing.encode_texts
    with Retriever(root, model=str(model), kind="dense", max_length=128, show_progress=False) as retriever:
        store = retriever.vectors.store if retriever.config else None

        def racing(head, texts, **kwargs):
            newer = retriever.vectors.store.get(["pkg/frobnicate.py#0"])[0]
            newer.text = "def replacedByAnotherWriter():\n    pass\n"
            retriever.vectors.store.put([newer])  # still pending, new text: what a concurrent run commits
            return original(head, texts, **kwargs)

        monkeypatch.setattr(indexing, "encode_texts", racing)
        summary = retriever.index()
        assert store is None and summary.encoded_chunks == len(TREE) - 1
        doc = retriever.vectors.documents(["pkg/frobnicate.py#0"])[0]
        assert doc.text.startswith("def replacedByAnotherWriter") and doc.metadata.get("pending")
        assert "pkg/frobnicate.py#0" not in retriever.vectors and retriever.status()["pending_chunks"] == 1
        monkeypatch.undo()
        assert retriever.index().encoded_chunks == 1 and retriever.status()["pending_chunks"] == 0
    next(gen, None)
