"""The metric wrapper against hand-computed values."""

from __future__ import annotations

import math

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
    assert evaluate({"q1": {"q1": 9.0, "d1": 1.0}}, qrels)["mrr@10"] == 1.0


def test_exact_search_top_k():
    import numpy as np

    q = np.array([[1.0, 0.0]], dtype=np.float32)
    d = np.array([[0.0, 1.0], [1.0, 0.0], [0.7, 0.7]], dtype=np.float32)
    run = exact_search(q, d, ["a", "b", "c"], ["q"], k=2)
    assert set(run["q"]) == {"b", "c"}


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
