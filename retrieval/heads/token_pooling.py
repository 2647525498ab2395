"""Token pooling for ColBERT documents: fewer vectors per document, as PyLate's ``pool_factor``.

The method (Clavié, Chaffin and Adams, "Reducing the Footprint of Multi-Vector Retrieval with Minimal Performance
Impact via Token Pooling", 2024), as PyLate 1.6 runs it: a document's first ``protected`` vectors ([CLS]) are kept
as they are; the others are clustered by Ward hierarchical clustering on the cosine distance (1 - dot product: the
vectors are L2-normalized) into ``n // pool_factor`` clusters (at least 1), and each cluster is replaced by the mean
of its vectors, in the order of the cluster labels. The means are not normalized again (PyLate does not: MaxSim then
weighs a tight cluster more than a loose one). A document with too few vectors to reduce stays whole. One
difference: distances are clipped at 0, so that a document with two (nearly) equal vectors is pooled where PyLate
1.6 raises (tests/fixtures/pylate_pooling); everywhere PyLate pools, the clipping changes nothing.

Queries are never pooled. The clustering is scipy's, on CPU, one document at a time; its time and memory grow with
the square of a document's vector count (an 8,192-token chunk: a 33M-entry distance matrix), a growing share of an
index's time on long chunks (README: Token pooling, its cost against encoding).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from modernretrieval.errors import SettingsError

PROTECTED_TOKENS = 1  # [CLS], as PyLate's default


def check_pool_factor(value: object) -> int:
    """``value`` as a pool factor: an integer >= 1 (1: no pooling), else SettingsError."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise SettingsError(f"the pool factor must be an integer of at least 1 (1: no pooling), got {value!r}")
    return int(value)


def pool_tokens(vectors: np.ndarray, pool_factor: int, protected: int = PROTECTED_TOKENS) -> np.ndarray:
    """One document's (n, dim) vectors -> (protected + about (n - protected) / pool_factor, dim), same dtype."""
    from scipy.cluster import hierarchy  # here: loading a ColBERT that does not pool never pays for scipy
    from scipy.spatial import distance

    pool_factor = check_pool_factor(pool_factor)
    kept, rest = vectors[:protected], vectors[protected:]
    n = len(rest)
    clusters = max(n // pool_factor, 1)
    if clusters >= n:
        return vectors
    # in the vectors' own precision, as PyLate (float32 for ours); clipped at 0: two vectors whose cosine rounds
    # above 1 would give Ward a negative merge height, which scipy's fcluster refuses (PyLate 1.6 raises there)
    distances = np.maximum(1 - rest @ rest.T, 0)
    condensed = distance.squareform(distances, checks=False)  # the upper triangle, row by row
    labels = hierarchy.fcluster(hierarchy.linkage(condensed, method="ward"), t=clusters, criterion="maxclust") - 1
    sums = np.zeros((clusters, vectors.shape[1]), dtype=vectors.dtype)
    np.add.at(sums, labels, rest)
    counts = np.bincount(labels, minlength=clusters)
    used = counts > 0  # maxclust may make fewer clusters than asked (ties)
    means = sums[used] / counts[used, None].astype(vectors.dtype)
    return np.concatenate([kept, means]).astype(vectors.dtype, copy=False)


def pool_documents(documents: Sequence[np.ndarray], pool_factor: int,
                   protected: int = PROTECTED_TOKENS) -> list[np.ndarray]:
    """``pool_tokens`` on each document; pool factor 1 returns the arrays as they are."""
    pool_factor = check_pool_factor(pool_factor)
    if pool_factor == 1:
        return list(documents)
    return [pool_tokens(d, pool_factor, protected) for d in documents]
