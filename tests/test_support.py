"""The shared ranking assertion fails on what it must catch and lets only float rounding through."""

from __future__ import annotations

import pytest

from support import assert_same_ranking

RANKING = [("a", 3.0), ("b", 2.5), ("c", 2.5 + 4e-7), ("d", 1.0), ("e", 0.5)]


def test_rounding_and_ties_in_either_order_pass():
    assert_same_ranking([[("a", 3.0 + 2e-7), *RANKING[1:]]], [RANKING])
    assert_same_ranking([[RANKING[0], RANKING[2], RANKING[1], *RANKING[3:]]], [RANKING])  # b and c tie


@pytest.mark.parametrize("changed", [
    [RANKING[1], RANKING[0], *RANKING[2:]],                      # order of two distinct scores
    [("x", 3.0), *RANKING[1:]],                                  # another document with the same score
    [*RANKING[:3], ("d", 1.001), RANKING[4]],                    # a score beyond rounding
    RANKING[:4],                                                 # one hit fewer
])
def test_a_changed_ranking_fails(changed):
    with pytest.raises(AssertionError):
        assert_same_ranking([changed], [RANKING])
