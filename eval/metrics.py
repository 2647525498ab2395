"""Retrieval metrics with trec_eval semantics, computed by pytrec_eval."""

from __future__ import annotations

import numpy as np

MEASURES = {"ndcg@10": "ndcg_cut_10", "recall@100": "recall_100", "mrr@10": "recip_rank", "map": "map"}


def evaluate(run: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]]) -> dict[str, float]:
    """Mean metrics over the judged queries. ``run``: query id -> {doc id: score}.

    A query's own id is dropped from its results, as BEIR does. MRR@10 is trec_eval's recip_rank on the top 10.
    """
    import pytrec_eval

    run = {q: {d: float(s) for d, s in docs.items() if d != q} for q, docs in run.items()}
    top10 = {q: dict(trec_order(docs)[:10]) for q, docs in run.items()}
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100", "map"})
    per_query = evaluator.evaluate(run)
    mrr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top10)
    judged = list(qrels)
    out = {}
    for name, key in MEASURES.items():
        table = mrr if name == "mrr@10" else per_query
        out[name] = float(np.mean([table.get(q, {}).get(key, 0.0) for q in judged]))
    out["num_queries"] = len(judged)
    return out


def without_own_ids(run: dict[str, dict[str, float]], depth: int) -> dict[str, dict[str, float]]:
    """Each query's top ``depth`` once its own id is dropped (searches ask for ``depth + 1`` so that one can be):
    what is scored and written to run.trec. Kept at ``depth`` because MAP, unlike the cut measures, counts every
    document of the run: a 101st document where the own id was not retrieved would add to it."""
    return {q: dict(trec_order({d: s for d, s in docs.items() if d != q})[:depth]) for q, docs in run.items()}


def trec_order(docs: dict[str, float]) -> list[tuple[str, float]]:
    """Best first, as trec_eval ranks: by score, ties broken by document id in descending order."""
    ranked = sorted(docs.items(), key=lambda kv: kv[0], reverse=True)
    ranked.sort(key=lambda kv: -kv[1])  # stable: equal scores keep the descending ids
    return ranked


def exact_search(query_vectors: np.ndarray, doc_vectors: np.ndarray, doc_ids: list[str], query_ids: list[str],
                 k: int = 100, *, block_scores: int = 1 << 24) -> dict[str, dict[str, float]]:
    """Exhaustive inner-product search (cosine on normalized vectors): query id -> {doc id: score} for the top k,
    best first.

    Through ``retrieval.scoring.dense_top_k``, the one exact search of the project: blocks of queries and documents
    of at most ``block_scores`` scores (64 MiB at the default), each merged into the running top k, never the whole
    queries x documents matrix (MS MARCO's 7k x 8.8M would be 250 GB). Ties at the k-th place keep the lower
    document index (the full matrix with a stable sort would keep the same), so the run does not depend on the
    block sizes. (Imported here: it brings torch, which the metrics alone do not need.)"""
    from retrieval.scoring import dense_top_k

    scores, top = dense_top_k(query_vectors, doc_vectors, k, block_scores=block_scores)
    return run_from_top_k(scores, top, doc_ids, query_ids)


def run_from_top_k(scores: np.ndarray, top: np.ndarray, doc_ids: list[str],
                   query_ids: list[str]) -> dict[str, dict[str, float]]:
    """The run (query id -> {doc id: score}) from a top-k search's (scores, document indices), row i for query i."""
    return {q: {doc_ids[j]: float(s) for s, j in zip(scores[i], top[i])} for i, q in enumerate(query_ids)}
