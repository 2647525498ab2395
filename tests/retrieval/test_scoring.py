"""retrieval.scoring's exact top-k against brute force: the full score matrix, then every row sorted by score
(ties: lower document index first). Exact ties are made with repeated documents; block sizes are chosen small so
that merges across blocks and ties at the k-th place are exercised."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval import scoring
from retrieval.scoring import dense_top_k, maxsim_top_k


def brute_force_top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Every row sorted whole: best score first, equal scores by ascending column."""
    order = np.array([np.lexsort((np.arange(len(row)), -row))[:k] for row in scores], dtype=np.int64)
    order = order.reshape(len(scores), min(k, scores.shape[1]))
    return np.take_along_axis(scores, order, 1), order


def corpus_with_ties(seed: int = 0, n_docs: int = 40, dim: int = 8) -> list[np.ndarray]:
    """Per-document token arrays; every third document repeats an earlier one, so their scores tie exactly."""
    rng = np.random.default_rng(seed)
    docs = [rng.standard_normal((int(rng.integers(1, 12)), dim)).astype(np.float32) for _ in range(n_docs)]
    for i in range(3, n_docs, 3):
        docs[i] = docs[i // 3].copy()
    return docs


def numpy_maxsim(queries: list[np.ndarray], docs: list[np.ndarray]) -> np.ndarray:
    """MaxSim written out: each query token's best document token, summed over the query's tokens."""
    return np.array([[(q @ d.T).max(axis=1).sum() for d in docs] for q in queries], dtype=np.float32)


def packed(docs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate(docs), np.concatenate([[0], np.cumsum([len(d) for d in docs])]).astype(np.int64)


@pytest.mark.parametrize("k", [0, 1, 7, 40, 100])
@pytest.mark.parametrize("block_tokens", [1, 23, 1 << 21])  # one document per block, a few, all in one
def test_maxsim_top_k_equals_brute_force(k, block_tokens):
    docs = corpus_with_ties()
    rng = np.random.default_rng(1)
    queries = [rng.standard_normal((int(rng.integers(1, 6)), 8)).astype(np.float32) for _ in range(5)]
    queries.append(docs[1][:2].copy())  # a query close to documents 1 and 3 (its copy): a tie near the top
    tokens, offsets = packed(docs)
    scores, top = maxsim_top_k(queries, tokens, offsets, k, block_tokens=block_tokens)
    expected_scores, expected_top = brute_force_top_k(numpy_maxsim(queries, docs), k)
    assert top.shape == (len(queries), min(k, len(docs))) and top.dtype == np.int64
    assert np.array_equal(top, expected_top)
    assert np.allclose(scores, expected_scores, rtol=0, atol=1e-5)


def test_maxsim_top_k_breaks_ties_by_the_lower_index_whatever_the_blocks():
    doc = np.eye(4, dtype=np.float32)[:2]
    docs = [doc] * 10  # ten identical documents: every score ties
    tokens, offsets = packed(docs)
    query = [np.ones((3, 4), np.float32)]
    for block_tokens in (1, 4, 7, 100):
        assert maxsim_top_k(query, tokens, offsets, 4, block_tokens=block_tokens)[1].tolist() == [[0, 1, 2, 3]]


def test_maxsim_top_k_scores_in_bounded_blocks_and_reports_progress(monkeypatch):
    """The memory bound: no block of scores spans the whole corpus, and each holds about block_tokens tokens."""
    docs = corpus_with_ties(n_docs=30)
    tokens, offsets = packed(docs)
    blocks, done = [], []
    real = scoring._merge_top

    def recording(best, scores, first, k):
        blocks.append((first, scores.shape[1]))
        return real(best, scores, first, k)

    monkeypatch.setattr(scoring, "_merge_top", recording)
    maxsim_top_k([docs[0]], tokens, offsets, 5, block_tokens=20, progress=done.append)
    assert len(blocks) > 1 and sum(n for _, n in blocks) == len(docs) and done == [n for _, n in blocks]
    for first, n in blocks:
        assert n == 1 or offsets[first + n] - offsets[first] <= 20


def test_maxsim_top_k_empty_inputs_and_mistakes():
    docs = corpus_with_ties(n_docs=5)
    tokens, offsets = packed(docs)
    scores, top = maxsim_top_k([], tokens, offsets, 3)
    assert scores.shape == top.shape == (0, 3)
    scores, top = maxsim_top_k([docs[0]], np.zeros((0, 8), np.float32), np.zeros(1, np.int64), 3)
    assert scores.shape == top.shape == (1, 0)
    with pytest.raises(ValueError, match="no token embeddings"):
        maxsim_top_k([docs[0]], tokens, np.array([0, 0, *offsets[1:]]), 3)
    with pytest.raises(ValueError, match="doc_offsets"):
        maxsim_top_k([docs[0]], tokens, offsets[:-1], 3)
    with pytest.raises(ValueError, match="k must be"):
        maxsim_top_k([docs[0]], tokens, offsets, -1)


def dense_with_ties(seed: int = 0, n: int = 50, dim: int = 6) -> np.ndarray:
    rng = np.random.default_rng(seed)
    documents = rng.standard_normal((n, dim)).astype(np.float32)
    documents[5::5] = documents[1]  # repeated rows: exact ties, one of them among the best for the query below
    return documents


@pytest.mark.parametrize("k", [0, 1, 9, 50, 80])
@pytest.mark.parametrize("block_scores", [1, 7, 64, 1 << 24])
def test_dense_top_k_equals_brute_force(k, block_scores):
    documents = dense_with_ties()
    queries = np.random.default_rng(2).standard_normal((7, 6)).astype(np.float32)
    queries[0] = documents[1]
    scores, top = dense_top_k(queries, documents, k, block_scores=block_scores)
    expected_scores, expected_top = brute_force_top_k(queries @ documents.T, k)
    assert top.shape == (7, min(k, 50)) and top.dtype == np.int64 and scores.dtype == np.float32
    assert np.array_equal(top, expected_top)
    assert np.allclose(scores, expected_scores, rtol=0, atol=1e-5)


def test_dense_top_k_ties_at_the_kth_place_keep_the_lower_indices():
    documents = np.ones((12, 3), np.float32)  # every document ties
    documents[7] = 2.0  # one better than the rest
    assert dense_top_k(np.ones((1, 3), np.float32), documents, 4, block_scores=5)[1].tolist() == [[7, 0, 1, 2]]


def test_dense_top_k_never_scores_more_than_a_block_at_once(monkeypatch):
    blocks = []
    real = scoring._merge_top

    def recording(best, scores, first, k):
        blocks.append(scores.shape)
        return real(best, scores, first, k)

    monkeypatch.setattr(scoring, "_merge_top", recording)
    documents = dense_with_ties(n=40)
    dense_top_k(np.ones((3, 6), np.float32), documents, 5, block_scores=30)
    assert len(blocks) > 1 and all(rows * columns <= 30 for rows, columns in blocks)
    assert sum(columns for _, columns in blocks) == 40


def test_dense_top_k_empty_inputs_and_mistakes():
    documents = dense_with_ties(n=4)
    scores, top = dense_top_k(np.zeros((0, 6), np.float32), documents, 10)
    assert scores.shape == top.shape == (0, 4)
    scores, top = dense_top_k(np.ones((2, 6), np.float32), np.zeros((0, 6), np.float32), 10)
    assert scores.shape == top.shape == (2, 0)
    with pytest.raises(ValueError, match="one dim"):
        dense_top_k(np.ones((2, 5), np.float32), documents, 3)
    with pytest.raises(ValueError, match="k must be"):
        dense_top_k(np.ones((2, 6), np.float32), documents, -1)
