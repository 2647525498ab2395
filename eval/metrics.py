"""Retrieval metrics with trec_eval semantics, computed by pytrec_eval."""

from __future__ import annotations

import warnings

import numpy as np

MEASURES = {"ndcg@10": "ndcg_cut_10", "recall@100": "recall_100", "mrr@10": "recip_rank", "map": "map"}

# A query's own id. BEIR's EvaluateRetrieval.evaluate (ignore_identical_ids=True, its default, which CoIR's evaluation
# keeps) drops a document whose id equals the query id from that query's results whatever the qrels say, and the
# published numbers were computed so (CQADupStack, Quora, ArguAna hold their queries in the corpus): we drop it too,
# for parity, on every dataset. Where the qrels judge a query's own id relevant, that judgement can then never be
# retrieved (a query judged on itself alone scores 0): rather than zero such queries silently, each evaluation warns
# with their count, and ``keep_own_ids`` (``mret eval --keep-own-ids``) scores the run as trec_eval would.


def own_ids_judged_relevant(qrels: dict[str, dict[str, int]]) -> list[str]:
    """The queries whose own id is judged relevant in ``qrels``: those that dropping own ids penalises."""
    return [q for q, docs in qrels.items() if docs.get(q, 0) > 0]


def evaluate(run: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]],
             keep_own_ids: bool = False) -> dict[str, float]:
    """Mean metrics over the judged queries. ``run``: query id -> {doc id: score}.

    A query's own id is dropped from its results, as BEIR does, unless ``keep_own_ids`` (see the comment above: a
    warning counts the queries this penalises). MRR@10 is trec_eval's recip_rank on the top 10.
    """
    import pytrec_eval

    if not keep_own_ids and (penalised := own_ids_judged_relevant(qrels)):
        warnings.warn(f"{len(penalised)} of {len(qrels)} queries have their own id judged relevant, but a query's "
                      "own id is dropped from its results as BEIR does, so these judgements cannot be retrieved "
                      f"(first: {penalised[0]!r}; --keep-own-ids scores them)", stacklevel=2)
    run = {q: {d: float(s) for d, s in docs.items() if keep_own_ids or d != q} for q, docs in run.items()}
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


def without_own_ids(run: dict[str, dict[str, float]], depth: int,
                    keep_own_ids: bool = False) -> dict[str, dict[str, float]]:
    """Each query's top ``depth`` once its own id is dropped (searches ask for ``depth + 1`` so that one can be;
    ``keep_own_ids``: not dropped, only cut): what is scored and written to run.trec. Kept at ``depth`` because MAP,
    unlike the cut measures, counts every document of the run: a 101st document where the own id was not retrieved
    would add to it."""
    return {q: dict(trec_order({d: s for d, s in docs.items() if keep_own_ids or d != q})[:depth])
            for q, docs in run.items()}


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
