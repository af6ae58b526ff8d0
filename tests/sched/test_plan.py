"""The decision -> actions step (corral.sched.plan): hand-computed cases and a property over random rounds."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sched_helpers import alloc, job

from corral.sched.plan import (
    InvalidDecision,
    Keep,
    Migrate,
    Preempt,
    Resize,
    Start,
    check_allocation,
    plan,
    validate,
)
from corral.sched.types import EMPTY, Allocation, ClusterView, Decision, JobView, Node

CLUSTER = ClusterView.uniform(2, 4)  # n0, n1 with devices 0-3


# -- plan: one case per action kind ---------------------------------------------


def test_a_waiting_job_that_gets_devices_starts() -> None:
    assert plan(Decision({"a": alloc(n0=[0, 1])}), {}) == [Start("a", alloc(n0=[0, 1]))]


def test_a_running_job_left_out_is_preempted() -> None:
    assert plan(Decision({}), {"a": alloc(n0=[0])}) == [Preempt("a", alloc(n0=[0]))]


def test_a_running_job_with_another_count_is_resized() -> None:
    actions = plan(Decision({"a": alloc(n0=[0, 1, 2])}), {"a": alloc(n0=[0])})
    assert actions == [Resize("a", alloc(n0=[0]), alloc(n0=[0, 1, 2]))]


def test_a_running_job_on_as_many_other_devices_migrates() -> None:
    actions = plan(Decision({"a": alloc(n1=[0, 1])}), {"a": alloc(n0=[2, 3])})
    assert actions == [Migrate("a", alloc(n0=[2, 3]), alloc(n1=[0, 1]))]


def test_a_running_job_on_the_same_devices_is_kept_even_as_an_equal_copy() -> None:
    held = alloc(n0=[0, 1])
    assert plan(Decision({"a": held}), {"a": held}) == [Keep("a", held)]
    assert plan(Decision({"a": alloc(n0=[1, 0])}), {"a": held}) == [Keep("a", held)]


def test_jobs_holding_nothing_and_getting_nothing_have_no_action() -> None:
    assert plan(Decision({}), {"a": EMPTY}) == []


def test_stops_come_before_starts_and_keeps_last_in_the_given_order() -> None:
    current = {"keep": alloc(n1=[3]), "old": alloc(n0=[0, 1]), "grow": alloc(n1=[0])}
    decision = Decision({"new": alloc(n0=[0, 1]), "keep": alloc(n1=[3]), "grow": alloc(n1=[0, 1])})
    actions = plan(decision, current, order=["grow", "new", "old", "keep"])
    assert actions == [
        Resize("grow", alloc(n1=[0]), alloc(n1=[0, 1])),
        Preempt("old", alloc(n0=[0, 1])),
        Start("new", alloc(n0=[0, 1])),
        Keep("keep", alloc(n1=[3])),
    ]
    # Default order: current's, then the decision's.
    assert [a.job_id for a in plan(decision, current)] == ["old", "grow", "new", "keep"]


def test_keeps_false_and_changed_limit_the_actions() -> None:
    current = {"a": alloc(n0=[0]), "b": alloc(n0=[1])}
    decision = Decision({"a": current["a"], "c": alloc(n1=[0])})
    assert plan(decision, current, keeps=False) == [Preempt("b", alloc(n0=[1])), Start("c", alloc(n1=[0]))]
    assert plan(decision, current, keeps=False, changed=["c"]) == [Start("c", alloc(n1=[0]))]


# -- validate: one case per violation ----------------------------------------------

JOBS = [job("a", 2), job("b", 1), job("e", 2, lo=1, hi=3)]


@pytest.mark.parametrize(
    ("allocations", "message"),
    [
        ({"ghost": alloc(n0=[0])}, "unknown or inactive job 'ghost'"),
        ({"a": alloc(n9=[0, 1])}, "unknown node 'n9'"),
        ({"a": alloc(n0=[3, 4])}, "node 'n0' has no device 4"),
        ({"a": alloc(n0=[0, 1]), "b": alloc(n0=[1])}, "device 1 of node 'n0' given twice"),
        ({"a": Allocation((("n0", (1, 1)),))}, "device 1 of node 'n0' given twice"),
        ({"e": alloc(n0=[0, 1], n1=[0, 1])}, "got 4 devices, outside \\[1, 3\\]"),
        ({"a": alloc(n0=[0])}, "got 1 devices, outside \\[2, 2\\]: a partial gang"),
        ({"a": EMPTY}, "empty allocation"),
        ({"a": {"n0": [0, 1]}}, "expected an Allocation, got dict"),
    ],
)
def test_each_violation_is_named(allocations: dict[str, Allocation], message: str) -> None:
    with pytest.raises(InvalidDecision, match=message):
        validate(Decision(allocations), JOBS, CLUSTER)
    # The same violation is found when the round is checked incrementally.
    with pytest.raises(InvalidDecision, match=message):
        validate(Decision(allocations), {j.id: j for j in JOBS}, CLUSTER, previous={}, held={})


def test_not_a_decision_is_named() -> None:
    with pytest.raises(InvalidDecision, match="returned dict, expected Decision"):
        validate({"a": alloc(n0=[0, 1])}, JOBS, CLUSTER)  # type: ignore[arg-type]


def test_a_valid_decision_passes_and_reports_what_changed() -> None:
    decision = Decision({"a": alloc(n0=[0, 1]), "e": alloc(n1=[0, 1, 2])})
    assert validate(decision, JOBS, CLUSTER) == ["a", "e"]


def test_check_allocation_is_the_per_job_rule() -> None:
    sizes = CLUSTER.sizes
    assert check_allocation(job("a", 2), alloc(n0=[0, 1]), sizes) is None
    assert "partial gang" in (check_allocation(job("a", 2), alloc(n0=[0]), sizes) or "")
    assert "outside [1, 1]" in (check_allocation(job("b"), alloc(n0=[0, 1]), sizes) or "")


def test_incremental_validation_checks_changes_against_what_the_others_hold() -> None:
    a, b = alloc(n0=[0, 1]), alloc(n1=[0])
    previous = {"a": a, "b": b}
    held = {"n0": {0, 1}, "n1": {0}}
    jobs = {j.id: j for j in JOBS}
    # b moves onto a device a holds and keeps: rejected.
    with pytest.raises(InvalidDecision, match="device 1 of node 'n0' given twice"):
        validate(Decision({"a": a, "b": alloc(n0=[1])}), jobs, CLUSTER, previous=previous, held=held)
    # a leaves, so b may take a's device in the same decision; unchanged a is not reported.
    assert validate(Decision({"b": alloc(n0=[1])}), jobs, CLUSTER, previous=previous, held=held) == ["b", "a"]
    assert validate(Decision({"a": a, "b": b}), jobs, CLUSTER, previous=previous, held=held) == []
    # A kept allocation of a job that is no longer active is still an unknown job.
    with pytest.raises(InvalidDecision, match="unknown or inactive job 'b'"):
        validate(Decision({"a": a, "b": b}), {"a": jobs["a"]}, CLUSTER, previous=previous, held=held)


# -- the property: applying the actions yields the decision ---------------------------


@st.composite
def transitions(draw: st.DrawFn) -> tuple[ClusterView, dict[str, JobView], dict[str, Allocation], Decision]:
    """A cluster, jobs, what they hold now (valid, disjoint) and a valid decision (disjoint, any job)."""
    sizes = draw(st.lists(st.integers(1, 6), min_size=1, max_size=4))
    cluster = ClusterView(tuple(Node(f"n{i}", s) for i, s in enumerate(sizes)))
    devices = [(f"n{i}", d) for i, s in enumerate(sizes) for d in range(s)]
    rng = draw(st.randoms(use_true_random=False))
    ids = [f"j{i}" for i in range(draw(st.integers(0, 10)))]

    def allocations(keep: dict[str, Allocation]) -> dict[str, Allocation]:
        taken_by_kept = {dev for a in keep.values() for dev in a.devices()}
        free = [dev for dev in devices if dev not in taken_by_kept]
        rng.shuffle(free)
        out = dict(keep)
        for job_id in ids:
            k = rng.choice([0, 0, 1, 2, 3])
            if job_id not in out and 0 < k <= len(free):
                taken, free = free[:k], free[k:]
                by_node: dict[str, list[int]] = {}
                for node, dev in taken:
                    by_node.setdefault(node, []).append(dev)
                out[job_id] = Allocation.of(by_node)
        return out

    current = allocations({})
    # Some jobs keep exactly what they hold, as most do in a round.
    target = allocations({j: a for j, a in current.items() if rng.random() < 0.4})
    jobs = {job_id: JobView(id=job_id, min_gpus=1, max_gpus=3, gpus=1) for job_id in ids}
    return cluster, jobs, current, Decision(target)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=transitions())
def test_applying_the_plan_to_current_yields_the_decision(case) -> None:
    cluster, jobs, current, decision = case
    validate(decision, jobs, cluster)
    actions = plan(decision, current)
    state = dict(current)
    kinds = [type(a) for a in actions]
    first_start = min((i for i, k in enumerate(kinds) if k in (Start, Keep)), default=len(kinds))
    assert all(k in (Preempt, Resize, Migrate) for k in kinds[:first_start]), "stops come before starts"
    assert all(k in (Start, Keep) for k in kinds[first_start:])
    for action in actions:
        if isinstance(action, Start):
            assert not state.get(action.job_id)
            state[action.job_id] = action.new
        elif isinstance(action, Preempt):
            assert state.pop(action.job_id) == action.old
        elif isinstance(action, (Resize, Migrate)):
            assert state[action.job_id] == action.old
            assert (action.old.num_devices != action.new.num_devices) == isinstance(action, Resize)
            state[action.job_id] = action.new
        else:
            assert state[action.job_id] == action.allocation
    assert state == dict(decision.allocations)
    # The incremental path (only the changes) gives the same actions less the Keeps.
    held: dict[str, set[int]] = {}
    for a in current.values():
        for node, dev in a.devices():
            held.setdefault(node, set()).add(dev)
    changed = validate(decision, jobs, cluster, previous=current, held=held)
    assert plan(decision, current, keeps=False, changed=changed) == [
        a for a in plan(decision, current, order=changed) if not isinstance(a, Keep)
    ]
