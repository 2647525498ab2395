"""Scoring, in one place: MaxSim (late interaction: for each query token its best document token, summed over the
query's tokens) and exact top-k search over single vectors (inner product) and over multi-vectors (MaxSim).

The heads' ``similarity``, the eval harness's exact search and the training evaluation all score through here, so
that a ranking is computed one way only. Pure numpy/torch arithmetic: this module imports nothing of ours.

Exact top-k never builds the full queries x documents score matrix: documents are scored a block at a time and each
block is merged into the best k found so far. Order of the hits: best score first; equal scores by ascending
document index, so that a ranking is the same whatever the block sizes (``np.argpartition`` alone would pick
among ties at the k-th place arbitrarily).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch


def maxsim(queries: Sequence[np.ndarray], documents: Sequence[np.ndarray], batch_tokens: int = 1 << 20) -> np.ndarray:
    """(len(queries), len(documents)) MaxSim scores from per-text (n_tokens, dim) arrays.

    Documents are concatenated once (no padding) and scored in chunks of about ``batch_tokens`` document tokens;
    each chunk's per-token maxima are reduced per document with a segment max. For a large corpus, where the whole
    matrix would not fit, use ``maxsim_top_k``."""
    scores = np.zeros((len(queries), len(documents)), dtype=np.float32)
    if not len(queries) or not len(documents):
        return scores
    lengths = [len(d) for d in documents]
    if min(lengths) == 0:
        raise ValueError("a document has no token embeddings")
    query_tensors = [_tensor(q) for q in queries]
    start = 0
    while start < len(documents):
        stop, tokens = start, 0
        while stop < len(documents) and (stop == start or tokens + lengths[stop] <= batch_tokens):
            tokens += lengths[stop]
            stop += 1
        doc_tokens = torch.from_numpy(np.concatenate(documents[start:stop]).astype(np.float32, copy=False))
        scores[:, start:stop] = _maxsim_block(query_tensors, doc_tokens, torch.tensor(lengths[start:stop]))
        start = stop
    return scores


def maxsim_top_k(queries: Sequence[np.ndarray], doc_tokens: np.ndarray, doc_offsets: np.ndarray, k: int, *,
                 block_tokens: int = 1 << 21,
                 progress: Callable[[int], object] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact MaxSim search: for each query (an (n_tokens, dim) array), the ``k`` best documents of a packed corpus.

    ``doc_tokens`` (total_tokens, dim) holds every document's token vectors one after the other; document i is rows
    ``doc_offsets[i]:doc_offsets[i + 1]``. Documents are scored in blocks holding about ``block_tokens`` tokens, so
    memory stays bounded on a corpus of any size. ``progress`` is called with the number of documents of each block
    once every query has been scored against it.

    Returns (scores, document indices), each (len(queries), min(k, n_documents)), best first (ties: lower index
    first)."""
    _check_k(k)
    doc_offsets = np.asarray(doc_offsets, dtype=np.int64)
    n_docs = len(doc_offsets) - 1
    if n_docs < 0 or doc_offsets[0] != 0 or doc_offsets[-1] != len(doc_tokens) or (np.diff(doc_offsets) < 0).any():
        raise ValueError("doc_offsets must rise from 0 to len(doc_tokens), one more entry than documents")
    if n_docs and (np.diff(doc_offsets) == 0).any():
        raise ValueError("a document has no token embeddings")
    best = _empty_top(len(queries))
    query_tensors = [_tensor(q) for q in queries]
    for start, stop in _token_blocks(doc_offsets, block_tokens):
        tokens = _tensor(doc_tokens[doc_offsets[start]:doc_offsets[stop]])
        lengths = torch.from_numpy(np.diff(doc_offsets[start:stop + 1]))
        best = _merge_top(best, _maxsim_block(query_tensors, tokens, lengths), start, k)
        if progress is not None:
            progress(stop - start)
    return best


def dense_top_k(queries: np.ndarray, documents: np.ndarray, k: int, *,
                block_scores: int = 1 << 24) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product search (cosine on normalized vectors): for each query row, the ``k`` best document rows.

    Scores are float32 matrix products over blocks of queries and documents of at most ``block_scores`` entries
    (64 MiB at the default), merged into the running top k. Returns (scores, document indices), each
    (n_queries, min(k, n_documents)), best first (ties: lower index first)."""
    _check_k(k)
    queries = np.asarray(queries, dtype=np.float32)
    documents = np.asarray(documents, dtype=np.float32)
    if queries.ndim != 2 or documents.ndim != 2 or (len(queries) and len(documents)
                                                      and queries.shape[1] != documents.shape[1]):
        raise ValueError(f"queries {queries.shape} and documents {documents.shape} must be (n, dim) of one dim")
    n_queries, n_docs = len(queries), len(documents)
    query_block = max(1, min(n_queries, 1024))
    doc_block = max(1, block_scores // query_block)
    parts = []
    for q_start in range(0, n_queries, query_block):
        block = queries[q_start:q_start + query_block]
        best = _empty_top(len(block))
        for d_start in range(0, n_docs, doc_block):
            best = _merge_top(best, block @ documents[d_start:d_start + doc_block].T, d_start, k)
        parts.append(best)
    if not parts:
        return _empty_top(0, min(k, n_docs))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


# ----- internals
def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def _maxsim_block(queries: Sequence[torch.Tensor], doc_tokens: torch.Tensor, lengths: torch.Tensor) -> np.ndarray:
    """(len(queries), len(lengths)) MaxSim of each query against the documents whose tokens lie one after the other
    in ``doc_tokens`` (document j holds ``lengths[j]`` of them): one matrix product per query, then a segment max
    per document and a sum over the query's tokens."""
    owner = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
    scores = np.empty((len(queries), len(lengths)), dtype=np.float32)
    for i, query in enumerate(queries):
        similarity = query @ doc_tokens.T  # (query tokens, block tokens)
        per_doc = torch.full((similarity.shape[0], len(lengths)), -torch.inf)
        per_doc.scatter_reduce_(1, owner.expand(similarity.shape[0], -1), similarity, "amax")
        scores[i] = per_doc.sum(0).numpy()
    return scores


def _token_blocks(offsets: np.ndarray, block_tokens: int) -> list[tuple[int, int]]:
    """(first, end) document ranges of about ``block_tokens`` tokens each; a longer document is a block alone."""
    n_docs = len(offsets) - 1
    blocks, start = [], 0
    while start < n_docs:
        stop = int(np.searchsorted(offsets, offsets[start] + block_tokens, side="right")) - 1
        stop = min(max(stop, start + 1), n_docs)
        blocks.append((start, stop))
        start = stop
    return blocks


def _check_k(k: int) -> None:
    if k < 0:
        raise ValueError(f"k must be at least 0, got {k}")


def _empty_top(n_queries: int, width: int = 0) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((n_queries, width), np.float32), np.zeros((n_queries, width), np.int64)


def _merge_top(best: tuple[np.ndarray, np.ndarray], scores: np.ndarray, first: int,
               k: int) -> tuple[np.ndarray, np.ndarray]:
    """The running top k (sorted, of documents before ``first``) merged with a block of scores (n_queries, n) of
    documents ``first`` .. ``first + n - 1``. A stable sort keeps earlier (lower) indices first among equal scores."""
    values, columns = _block_top(scores.astype(np.float32, copy=False), k)
    values = np.concatenate([best[0], values], axis=1)
    ids = np.concatenate([best[1], columns + first], axis=1)
    keep = np.argsort(-values, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(values, keep, 1), np.take_along_axis(ids, keep, 1)


def _block_top(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k best (score, column), best first, equal scores by ascending column.

    A partition finds a top-k set in linear time; it is exact unless more columns than fit tie with the k-th
    score, and those rows (rare) are sorted whole instead."""
    n = scores.shape[1]
    if n <= k:
        columns = np.argsort(-scores, axis=1, kind="stable")
        return np.take_along_axis(scores, columns, 1), columns
    if k == 0:
        return _empty_top(len(scores))
    columns = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    values = np.take_along_axis(scores, columns, 1)
    kth = values.min(axis=1, keepdims=True)
    ambiguous = np.flatnonzero((scores >= kth).sum(axis=1) > k)
    if len(ambiguous):
        exact = np.argsort(-scores[ambiguous], axis=1, kind="stable")[:, :k]
        columns[ambiguous] = exact
        values[ambiguous] = np.take_along_axis(scores[ambiguous], exact, 1)
    order = np.lexsort((columns, -values), axis=1)
    return np.take_along_axis(values, order, 1), np.take_along_axis(columns, order, 1)


def maxsim_scores(queries: Sequence[torch.Tensor], documents: Sequence[torch.Tensor]) -> torch.Tensor:
    """(n_queries, n_documents) late-interaction scores, differentiable: for each query token its best document
    token, summed. Documents are padded here (after the encoder) with -inf so that padding never wins a max."""
    dim = queries[0].shape[1]
    longest = max(len(d) for d in documents)
    padded = queries[0].new_zeros(len(documents), longest, dim)
    valid = torch.zeros(len(documents), longest, dtype=torch.bool, device=padded.device)
    for i, d in enumerate(documents):
        padded[i, : len(d)] = d
        valid[i, : len(d)] = True
    rows = []
    for q in queries:
        sims = torch.einsum("qd,ntd->nqt", q, padded).masked_fill(~valid[:, None, :], float("-inf"))
        rows.append(sims.max(dim=2).values.sum(dim=1))
    return torch.stack(rows)
