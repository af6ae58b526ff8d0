"""Array ranges and dependency rules, by hand (the pure part of job arrays and `depends_on`)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral.control.arrays import MAX_ARRAY, Dependency, dependency_status, elements, parse_range


@pytest.mark.parametrize(
    "text, indices",
    [
        ("0-9", list(range(10))),
        ("3", [3]),
        ("1,3,8", [1, 3, 8]),
        ("0-20:5", [0, 5, 10, 15, 20]),
        ("5-7, 1, 6", [1, 5, 6, 7]),  # overlaps count once, in order
    ],
)
def test_ranges(text: str, indices: list[int]) -> None:
    assert parse_range(text) == indices


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "is not an index"),
        ("9-3", "ends before it starts"),
        ("0-9:0", "step 0"),
        ("a-b", "is not an index"),
        ("-1", "is not an index"),
        ("0-1000", f"at most {MAX_ARRAY}"),
        ("0-999,1000", f"at most {MAX_ARRAY}"),
    ],
)
def test_bad_ranges(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_range(text)


def test_values_are_indexed_from_zero_and_non_strings_become_json() -> None:
    assert elements(["a", 0.1, 3, {"lr": 1}]) == [(0, "a"), (1, "0.1"), (2, "3"), (3, '{"lr": 1}')]
    assert elements("2-4") == [(2, "2"), (3, "3"), (4, "4")]
    with pytest.raises(ValueError):
        elements([])


@given(st.lists(st.integers(0, 5000), min_size=1, max_size=50))
def test_a_comma_list_gives_its_distinct_indices(indices: list[int]) -> None:
    assert parse_range(",".join(map(str, indices))) == sorted(set(indices))


@pytest.mark.parametrize(
    "after, states, expected",
    [
        ("ok", [], Dependency.READY),
        ("ok", ["SUCCEEDED", "SUCCEEDED"], Dependency.READY),
        ("ok", ["SUCCEEDED", "RUNNING"], Dependency.WAITING),
        ("ok", ["PENDING", "FAILED"], Dependency.NEVER),  # a failure decides at once
        ("ok", ["CANCELLED"], Dependency.NEVER),
        ("ok", [None], Dependency.NEVER),
        ("any", ["FAILED", "CANCELLED", "SUCCEEDED"], Dependency.READY),
        ("any", ["FAILED", "RESTARTING"], Dependency.WAITING),
        ("any", ["PREEMPTED"], Dependency.WAITING),
    ],
)
def test_dependency_rules(after: str, states: list[str | None], expected: Dependency) -> None:
    assert dependency_status(after, states) == expected
