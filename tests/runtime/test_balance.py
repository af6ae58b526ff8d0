"""Pipeline stage balancing: the exact split against brute force, and its errors."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.errors import UserError
from corral.runtime.balance import balance, split_of


def brute_force(costs: list[float], stages: int) -> float:
    """The smallest slowest stage over every contiguous split into `stages` non-empty stages."""
    n = len(costs)
    best = float("inf")
    for cuts in itertools.combinations(range(1, n), stages - 1):
        edges = (0, *cuts, n)
        best = min(best, max(sum(costs[a:b]) for a, b in itertools.pairwise(edges)))
    return best


@settings(max_examples=300, deadline=None)
@given(
    costs=st.lists(st.floats(min_value=0, max_value=100, allow_nan=False), min_size=1, max_size=10),
    data=st.data(),
)
def test_balance_is_the_brute_force_optimum(costs: list[float], data) -> None:
    stages = data.draw(st.integers(min_value=1, max_value=len(costs)))
    split = balance(costs, stages)
    assert len(split.counts) == stages and all(n >= 1 for n in split.counts) and sum(split.counts) == len(costs)
    # Contiguous and covering: the bounds chain from layer 0 to the last layer.
    assert split.bounds[0][0] == 0 and split.bounds[-1][1] == len(costs)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(split.bounds))
    assert split.costs == pytest.approx([sum(costs[a:b]) for a, b in split.bounds])
    assert split.slowest == pytest.approx(brute_force(costs, stages), rel=1e-9, abs=1e-9)


def test_hand_computed_splits() -> None:
    assert balance([1, 1, 1, 1], 2).counts == (2, 2)
    assert balance([4, 1, 1, 1, 1], 2).counts == (1, 4)
    assert balance([1, 2, 3, 4, 5, 6, 7, 8, 9], 3).counts == (5, 2, 2)  # 15, 13, 17: slowest 17
    # Equal costs, different bytes: the tie goes to the split with the smaller largest stage.
    assert balance([1, 1, 1], 2, sizes=[10, 0, 0]).counts == (1, 2)


def test_too_few_layers_and_bad_balances_are_user_errors() -> None:
    with pytest.raises(UserError, match="3 layers cannot be split into 4 stages"):
        balance([1, 1, 1], 4)
    with pytest.raises(UserError, match="summing to the model's 3 layers"):
        split_of([1, 1], [1, 1, 1])
    with pytest.raises(UserError, match="positive layer counts"):
        split_of([0, 3], [1, 1, 1])
