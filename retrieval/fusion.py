"""Fusion of rankings: one list from the semantic (embedding) and the lexical (BM25) ranking of the same query.

Two methods; the default, ``blend`` with the lexical list weighted 2, was chosen on the code benchmark's dev split
(bench/tune_hybrid.py) and agrees with SciFact (README, "Hybrid search"):
- ``rrf``: reciprocal rank fusion (Cormack et al. 2009), score = sum over lists of weight / (constant + rank). It
  needs no score calibration, which matters here: BM25 scores are unbounded and vary with the query's length, while
  cosines sit in a narrow band that differs by model.
- ``blend``: each list's scores min-max normalized to [0, 1] over its own candidates, then a weighted sum.

Candidates come from both lists (a document found by only one of them is fused with nothing from the other), so
a chunk that only the lexical side finds can win. Pure functions over (id, score) lists: the codebase retriever
and the evaluation harness fuse the same way."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

MODES: tuple[str, ...] = ("hybrid", "semantic", "lexical")  # what a search ranks by: both sides fused, or one
Ranking = Sequence[tuple[str, float]]  # (document id, score), best first
Method = Literal["rrf", "blend"]
RRF_CONSTANT = 60  # Cormack et al.'s k
METHOD: Method = "blend"  # the defaults of fuse() (read when it is called)
LEXICAL_WEIGHT = 2.0


def fuse(semantic: Ranking, lexical: Ranking, k: int, method: Method | None = None,
         lexical_weight: float | None = None, constant: int = RRF_CONSTANT) -> list[tuple[str, float]]:
    """The ``k`` best documents of the fused ranking, best first (ties: the order of first appearance, semantic
    first). ``lexical_weight``: the lexical list's weight relative to the semantic list's 1 (default
    ``LEXICAL_WEIGHT``); ``method``: default ``METHOD``."""
    method = METHOD if method is None else method
    lexical_weight = LEXICAL_WEIGHT if lexical_weight is None else lexical_weight
    if method == "rrf":
        scores = _rrf([semantic, lexical], [1.0, lexical_weight], constant)
    elif method == "blend":
        scores = _blend([semantic, lexical], [1.0, lexical_weight])
    else:
        raise ValueError(f"fusion method must be rrf or blend, got {method!r}")
    order = {doc_id: i for i, doc_id in enumerate(scores)}
    return sorted(scores.items(), key=lambda item: (-item[1], order[item[0]]))[:k]


def _rrf(rankings: Sequence[Ranking], weights: Sequence[float], constant: int) -> dict[str, float]:
    scores: dict[str, float] = {}
    for ranking, weight in zip(rankings, weights):
        for rank, (doc_id, _) in enumerate(ranking, start=1):
            scores[doc_id] = scores.get(doc_id, 0.0) + weight / (constant + rank)
    return scores


def _blend(rankings: Sequence[Ranking], weights: Sequence[float]) -> dict[str, float]:
    scores: dict[str, float] = {}
    for ranking, weight in zip(rankings, weights):
        if not ranking:
            continue
        values = [score for _, score in ranking]
        low, high = min(values), max(values)
        for doc_id, score in ranking:
            normalized = (score - low) / (high - low) if high > low else 1.0
            scores[doc_id] = scores.get(doc_id, 0.0) + weight * normalized
    return scores
