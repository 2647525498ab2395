"""eval.runner.evaluate_head (what training reports at each evaluation) against the run computed by brute force: every
query scored against every document in numpy, the best 101 kept, scored by pytrec_eval. Stand-in heads give each
text a vector of its own, so that a 150-document set has relevant documents far down some rankings."""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
import pytest

from eval.datasets.beir import BeirDataset
from eval.metrics import evaluate
from eval.runner import evaluate_head

DIM = 6


class StandInHead:
    """The ``Head`` interface without a model: each text's vectors drawn from its checksum."""

    def __init__(self, kind: str):
        self.kind, self.dim = kind, DIM

    def tokenize(self, texts: Sequence[str], is_query: bool) -> list[list[int]]:
        return [[0] * len(text.split()) for text in texts]

    def encode_documents(self, texts: Sequence[str], show_progress: bool | None = None):
        return self._encode(texts)

    def encode_queries(self, texts: Sequence[str], show_progress: bool | None = None):
        return self._encode(texts)

    def _encode(self, texts: Sequence[str]):
        rows = [vectors(self.kind, text) for text in texts]
        return np.stack(rows) if self.kind == "dense" else rows


def vectors(kind: str, text: str) -> np.ndarray:
    rng = np.random.default_rng(zlib.crc32(text.encode()))
    return rng.standard_normal(DIM if kind == "dense" else (1 + len(text) % 5, DIM)).astype(np.float32)


@pytest.fixture(scope="module")
def dataset() -> BeirDataset:
    rng = np.random.default_rng(0)
    corpus = {f"d{i}": {"title": "", "text": f"document number {i}"} for i in range(150)}
    queries = {f"q{i}": f"query number {i}" for i in range(8)}
    qrels = {q: {f"d{j}": int(rng.integers(1, 3)) for j in rng.choice(150, size=6, replace=False)} for q in queries}
    return BeirDataset(corpus, queries, qrels, name="stand-in")


def brute_force_metrics(kind: str, dataset: BeirDataset) -> dict[str, float]:
    doc_ids, query_ids = list(dataset.corpus), list(dataset.queries)
    docs = [vectors(kind, text) for text in dataset.document_texts(doc_ids)]
    queries = [vectors(kind, dataset.queries[q]) for q in query_ids]
    if kind == "dense":
        scores = np.stack(queries) @ np.stack(docs).T
    else:
        scores = np.array([[(q @ d.T).max(axis=1).sum() for d in docs] for q in queries], dtype=np.float32)
    run = {q: {doc_ids[j]: float(row[j]) for j in np.argsort(-row, kind="stable")[:101]}
           for q, row in zip(query_ids, scores)}
    metrics = evaluate(run, dataset.qrels)
    return {"ndcg@10": round(metrics["ndcg@10"], 4), "recall@100": round(metrics["recall@100"], 4)}


@pytest.mark.parametrize("kind", ["dense", "colbert"])
def test_evaluate_head_equals_brute_force(kind, dataset):
    result = evaluate_head(StandInHead(kind), dataset)
    expected = brute_force_metrics(kind, dataset)
    assert result == expected
    assert 0 < result["recall@100"] < 1  # the depth matters: some relevant documents rank past 100, some within


def test_a_query_found_in_the_corpus_still_gets_100_results(dataset):
    """A query's own id is dropped from its results (as BEIR does): 101 are fetched so that 100 remain. Here q0 is
    also a document, its own best match, and the document 101st in its ranking is relevant."""
    corpus = {**dataset.corpus, "q0": {"title": "", "text": dataset.queries["q0"]}}
    query = vectors("dense", dataset.queries["q0"])
    ranking = sorted(corpus, key=lambda d: -float(query @ vectors("dense", corpus[d]["text"])))
    assert ranking[0] == "q0"
    qrels = {**dataset.qrels, "q0": {ranking[100]: 1}}
    with_itself = BeirDataset(corpus, dataset.queries, qrels, name="stand-in")
    head = StandInHead("dense")
    recall = evaluate_head(head, with_itself)["recall@100"]
    assert recall == brute_force_metrics("dense", with_itself)["recall@100"]
    assert recall > evaluate_head(head, with_itself, depth=100)["recall@100"]
