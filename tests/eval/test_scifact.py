"""Real retrieval quality: all-MiniLM-L6-v2 through our bi-encoder on a fixed SciFact subset (the session's small one,
shared with the runner's dense tests), against sentence-transformers with the same exact search and pytrec_eval.
(Full run: bench/scifact_dense.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from eval.metrics import evaluate, exact_search


def test_minilm_on_scifact_subset_matches_sentence_transformers(scifact_small_subset, scifact_small_dense,
                                                              scifact_small_reference):
    subset = scifact_small_subset
    doc_ids, query_ids = list(subset.corpus), list(subset.queries)
    assert scifact_small_dense.doc_ids == doc_ids and scifact_small_dense.query_ids == query_ids
    d, q = scifact_small_dense.docs, scifact_small_dense.queries
    d_ref, q_ref = scifact_small_reference

    assert ((d * d_ref).sum(1)).min() >= 0.99999
    assert ((q * q_ref).sum(1)).min() >= 0.99999
    ours_metrics = evaluate(exact_search(q, d, doc_ids, query_ids), subset.qrels)
    reference_metrics = evaluate(exact_search(q_ref, d_ref, doc_ids, query_ids), subset.qrels)
    assert ours_metrics["num_queries"] == 60
    assert ours_metrics["ndcg@10"] == pytest.approx(reference_metrics["ndcg@10"], abs=1e-4)
    assert ours_metrics["ndcg@10"] > 0.6  # a real model on a small corpus: far above chance
    assert np.isclose(ours_metrics["recall@100"], reference_metrics["recall@100"], atol=1e-4)
