"""The metric wrapper against hand-computed values; exact search against the whole score matrix."""

from __future__ import annotations

import math
import tracemalloc
import warnings

import numpy as np
import pytest

from eval.metrics import evaluate, exact_search


def test_graded_ndcg_mrr_map_by_hand():
    qrels = {"q1": {"a": 2, "b": 1}, "q2": {"c": 1}}
    run = {"q1": {"b": 3.0, "x": 2.0, "a": 1.0}, "q2": {"y": 1.0}}  # q2 retrieves nothing relevant
    metrics = evaluate(run, qrels)
    # trec_eval's gain is the grade itself (not 2^grade - 1): b (1) at rank 1, a (2) at rank 3
    dcg = 1 / math.log2(2) + 2 / math.log2(4)
    ideal = 2 / math.log2(2) + 1 / math.log2(3)
    assert metrics["ndcg@10"] == pytest.approx((dcg / ideal + 0) / 2, abs=1e-4)
    assert metrics["mrr@10"] == pytest.approx((1.0 + 0) / 2)
    assert metrics["map"] == pytest.approx(((1 / 1 + 2 / 3) / 2 + 0) / 2)
    assert metrics["recall@100"] == pytest.approx((1 + 0) / 2)
    assert metrics["num_queries"] == 2


def test_query_own_id_is_excluded():
    qrels = {"q1": {"d1": 1}}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the own id is not judged: nothing to warn about
        assert evaluate({"q1": {"q1": 9.0, "d1": 1.0}}, qrels)["mrr@10"] == 1.0


def test_an_own_id_judged_relevant_is_dropped_as_beir_does_with_one_warning():
    """BEIR (ignore_identical_ids=True) drops a query's own id whatever the qrels say: q2, judged on itself alone,
    scores 0 and q1 loses half its recall, as in BEIR's figures; but one warning counts them, not silently.
    keep_own_ids scores the run as trec_eval would."""
    qrels = {"q1": {"q1": 1, "d1": 1}, "q2": {"q2": 1}, "q3": {"d3": 1}, "q4": {"q4": 0, "d4": 1}}
    run = {"q1": {"q1": 9.0, "d1": 1.0}, "q2": {"q2": 5.0, "x": 1.0}, "q3": {"d3": 1.0, "q3": 0.5},
           "q4": {"q4": 3.0, "d4": 1.0}}
    with pytest.warns(UserWarning) as caught:
        dropped = evaluate(run, qrels)
    assert [str(w.message) for w in caught] == [  # one warning for the evaluation; q4's own id is judged 0
        "2 of 4 queries have their own id judged relevant, but a query's own id is dropped from its results as "
        "BEIR does, so these judgements cannot be retrieved (first: 'q1'; --keep-own-ids scores them)"]
    assert dropped["mrr@10"] == pytest.approx((1 + 0 + 1 + 1) / 4)
    assert dropped["recall@100"] == pytest.approx((0.5 + 0 + 1 + 1) / 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kept = evaluate(run, qrels, keep_own_ids=True)
    assert kept["mrr@10"] == pytest.approx((1 + 1 + 1 + 0.5) / 4)  # q4's own id (judged 0) now ranks first
    assert kept["recall@100"] == 1.0


def test_exact_search_top_k():
    q = np.array([[1.0, 0.0]], dtype=np.float32)
    d = np.array([[0.0, 1.0], [1.0, 0.0], [0.7, 0.7]], dtype=np.float32)
    run = exact_search(q, d, ["a", "b", "c"], ["q"], k=2)
    assert set(run["q"]) == {"b", "c"}


def full_matrix_search(q: np.ndarray, d: np.ndarray, doc_ids: list[str], query_ids: list[str],
                       k: int) -> dict[str, dict[str, float]]:
    """The oracle: exact_search as it was, the whole queries x documents matrix at once, with its ranking made
    deterministic (it took an argpartition's arbitrary pick among ties): every row sorted whole, best first, equal
    scores by ascending document index (a stable sort)."""
    scores = q @ d.T
    run = {}
    for i, query_id in enumerate(query_ids):
        order = np.argsort(-scores[i], kind="stable")[:k]
        run[query_id] = {doc_ids[j]: float(scores[i, j]) for j in order}
    return run


N_QUERIES, N_DOCS = 1030, 60  # 1030: two blocks of queries (dense_top_k scores at most 1024 queries at once)


@pytest.mark.parametrize("k", [1, 7, N_DOCS, N_DOCS + 15])
@pytest.mark.parametrize("docs_per_block", [1, 7, N_DOCS])  # 7: blocks that do not divide the corpus
def test_exact_search_equals_the_full_matrix(k, docs_per_block):
    """Small integer vectors: scores are exact (float32 sums of small integers, whatever the block), so any
    difference is the merge's, not rounding's; and scores from -12 to 12 over 60 documents tie everywhere,
    at the k-th place too. k > number of documents returns every document."""
    rng = np.random.default_rng(k * 100 + docs_per_block)
    q = rng.integers(-2, 3, (N_QUERIES, 6)).astype(np.float32)
    d = rng.integers(-1, 2, (N_DOCS, 6)).astype(np.float32)
    doc_ids, query_ids = [f"d{j}" for j in range(N_DOCS)], [f"q{i}" for i in range(N_QUERIES)]
    run = exact_search(q, d, doc_ids, query_ids, k=k, block_scores=docs_per_block * 1024)
    expected = full_matrix_search(q, d, doc_ids, query_ids, k)
    assert list(run) == query_ids
    for query_id in query_ids:
        assert list(run[query_id]) == list(expected[query_id])  # the same documents in the same order
        assert list(run[query_id].values()) == pytest.approx(list(expected[query_id].values()), abs=1e-6)
    ranked = -np.sort(-(q @ d.T), axis=1)
    if k < N_DOCS:  # the case the merge must get right is common here: a tie across the cut at the k-th place
        assert np.sum(ranked[:, k - 1] == ranked[:, k]) > N_QUERIES // 3


def test_exact_search_memory_stays_far_below_the_score_matrix():
    """The point of the blocks: numpy's peak allocation (tracemalloc) is a few blocks, not the 160 MB matrix.
    Prints the peak; time is not asserted."""
    n_queries, n_docs = 1024, 40_000
    rng = np.random.default_rng(0)
    q = rng.standard_normal((n_queries, 16), dtype=np.float32)
    d = rng.standard_normal((n_docs, 16), dtype=np.float32)
    doc_ids, query_ids = [str(j) for j in range(n_docs)], [str(i) for i in range(n_queries)]
    tracemalloc.start()
    try:
        run = exact_search(q, d, doc_ids, query_ids, k=10, block_scores=1 << 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    matrix = n_queries * n_docs * 4
    print(f"\nexact_search {n_queries} x {n_docs}: peak {peak / 2**20:.0f} MiB, the whole matrix "
          f"{matrix / 2**20:.0f} MiB")
    assert len(run) == n_queries and all(len(hits) == 10 for hits in run.values())
    assert peak < matrix / 4


def test_ties_are_ranked_as_trec_eval_ranks_them():
    """Equal scores: trec_eval puts the larger document id first; our MRR@10 cut follows the same order."""
    from eval.metrics import trec_order

    qrels = {"q": {"a": 1}}
    assert evaluate({"q": {"a": 1.0, "b": 1.0}}, qrels)["mrr@10"] == 0.5  # b before a
    assert trec_order({"a": 1.0, "b": 1.0, "c": 2.0}) == [("c", 2.0), ("b", 1.0), ("a", 1.0)]
    nine_better = {f"z{i}": 2.0 for i in range(9)}
    lost = evaluate({"q": {**nine_better, "a": 1.0, "b": 1.0}}, qrels)  # a is 11th
    assert lost["mrr@10"] == 0.0 and lost["ndcg@10"] == 0.0
    kept = evaluate({"q": {**nine_better, "a": 1.0, "0": 1.0}}, qrels)  # a is 10th: "a" > "0"
    assert kept["mrr@10"] == pytest.approx(1 / 10)
    assert kept["ndcg@10"] == pytest.approx(1 / math.log2(11), abs=1e-4)


def test_a_run_keeps_its_depth_once_the_own_id_is_dropped():
    """Searches ask for depth + 1 so that a query's own id can be dropped; where it was not retrieved the extra
    document goes too, or MAP (not a cut measure) would count a 101st document (BEIR reports MAP@k)."""
    from eval.metrics import without_own_ids

    qrels = {"q1": {"d3": 1, "d100": 1}}
    ranked = {f"d{i}": 1.0 - i / 1000 for i in range(101)}  # d0 best ... d100 the 101st
    kept = without_own_ids({"q1": ranked}, 100)
    assert len(kept["q1"]) == 100 and "d100" not in kept["q1"]
    assert evaluate(kept, qrels)["map"] == pytest.approx((1 / 4) / 2)  # d3 at rank 4; d100 beyond the depth
    own = without_own_ids({"q1": {"q1": 2.0, **ranked}}, 100)
    assert "q1" not in own["q1"] and len(own["q1"]) == 100
    kept = without_own_ids({"q1": {"q1": 2.0, **ranked}}, 100, keep_own_ids=True)  # --keep-own-ids: only cut
    assert list(kept["q1"])[:2] == ["q1", "d0"] and len(kept["q1"]) == 100
