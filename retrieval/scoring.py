"""Late-interaction scoring: for each query token, its best document token; summed over query tokens."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def maxsim(queries: Sequence[np.ndarray], documents: Sequence[np.ndarray], batch_tokens: int = 1 << 20) -> np.ndarray:
    """(len(queries), len(documents)) MaxSim scores from per-text (n_tokens, dim) arrays.

    Documents are concatenated once (no padding) and scored in chunks of about ``batch_tokens`` document tokens;
    each chunk's per-token maxima are reduced per document with a segment max.
    """
    scores = np.zeros((len(queries), len(documents)), dtype=np.float32)
    if not len(queries) or not len(documents):
        return scores
    lengths = [len(d) for d in documents]
    if min(lengths) == 0:
        raise ValueError("a document has no token embeddings")
    start = 0
    while start < len(documents):
        stop, tokens = start, 0
        while stop < len(documents) and (stop == start or tokens + lengths[stop] <= batch_tokens):
            tokens += lengths[stop]
            stop += 1
        doc_tokens = torch.from_numpy(np.concatenate(documents[start:stop]).astype(np.float32, copy=False))
        segment = torch.repeat_interleave(torch.arange(stop - start), torch.tensor(lengths[start:stop]))
        for i, query in enumerate(queries):
            sims = torch.from_numpy(np.asarray(query, dtype=np.float32)) @ doc_tokens.T  # (q_tokens, doc tokens)
            best = torch.full((sims.shape[0], stop - start), -torch.inf).scatter_reduce(
                1, segment.expand_as(sims), sims, reduce="amax")
            scores[i, start:stop] = best.sum(dim=0).numpy()
        start = stop
    return scores
