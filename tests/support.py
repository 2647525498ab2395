"""Assertions shared by the test modules."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Scores are float32 sums (a dot product, or MaxSim's sum of per-token maxima). Computed along another path (segments
# merged, an index reopened with another decoder, another batch), the same sum is accumulated in another order: each
# addition rounds by up to half an ulp, so a sum of a few dozen terms of magnitude <= 8 can move by ~1e-6. 1e-5 leaves
# a margin, and is still far below any difference between two documents that are not exact ties.
SCORE_ATOL = 1e-5

Hit = tuple  # (id, score, ...): the id first, the score second


def assert_same_ranking(actual: Sequence[Sequence[Hit]], expected: Sequence[Sequence[Hit]],
                        atol: float = SCORE_ATOL) -> None:
    """Per query, the same documents in the same order, with scores equal to within ``atol``.

    Use it where the two rankings come from different computations of the same scores; keep ``==`` where the
    computation is bit for bit the same. Documents whose scores agree within ``atol`` are ties: rounding may put
    them in either order, so a run of ties must hold the same ids in any order. The last run is compared by its scores
    alone: a tie with the document just past k may bring either one in."""
    assert len(actual) == len(expected), (len(actual), len(expected))
    for query, (got, want) in enumerate(zip(actual, expected)):
        assert len(got) == len(want), (query, got, want)
        got_scores, want_scores = np.array([h[1] for h in got]), np.array([h[1] for h in want])
        assert np.allclose(got_scores, want_scores, rtol=0, atol=atol), (query, got, want)
        start = 0
        while start < len(want):
            end = start + 1
            while end < len(want) and abs(want_scores[end - 1] - want_scores[end]) <= atol:
                end += 1
            if end < len(want):  # the last run may be cut at k, beside ties not shown: only its scores count
                assert {h[0] for h in got[start:end]} == {h[0] for h in want[start:end]}, (query, got, want)
            start = end
