"""Elastic jobs under the priority policy: borrowed devices, growth into free devices, and elastic=False.

A job asks for `gpus` (its request) within [min_gpus, max_gpus]. Every scenario
is one node of 4 devices and the default `pack` placer: a job whose count is
unchanged keeps its devices, a job that shrinks keeps its lowest devices, the
others take the lowest free devices of the fullest node that holds them.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sched_helpers import alloc, as_dicts, check_decision, job

from corral.errors import UserError
from corral.sched import policies
from corral.sched.policies._common import holds_valid, rigid_count
from corral.sched.types import REASON_RESOURCES, Allocation, ClusterView, Decision, JobView, Node

R = REASON_RESOURCES
FOUR = ClusterView.uniform(1, 4)


def decide(jobs: list[JobView], cluster: ClusterView = FOUR, **options: object) -> Decision:
    decision = policies.get("priority", **options).schedule(0.0, jobs, cluster)
    check_decision(decision, jobs, cluster)
    return decision


def after(jobs: list[JobView], decision: Decision) -> list[JobView]:
    """The same jobs one round later, each holding what the decision gave it (the service's resize included)."""
    return [replace(j, allocation=decision.allocation(j.id)) for j in jobs]


def elastic(job_id: str = "e", **kw: object) -> JobView:
    """The demo's elastic job: asks for 1 device, runs on 1 to 4."""
    return job(job_id, 1, lo=1, hi=4, **kw)


# --- the demo story ------------------------------------------------------------


def test_elastic_job_grows_shrinks_for_a_newcomer_and_grows_back():
    # Round 1: e alone gets its request (1), then the 3 spare devices: 4.
    jobs = [elastic()]
    d = decide(jobs)
    assert as_dicts(d) == {"e": {"n0": [0, 1, 2, 3]}}
    # Round 2: r (2, same priority, submitted later) arrives. e counts at its
    # request (1), so 3 devices are free without preempting anyone: r takes 2,
    # the 1 left goes back to e, which shrinks to 2 and keeps its lowest devices.
    jobs = [*after(jobs, d), job("r", 2, submit_time=1)]
    d = decide(jobs)
    assert as_dicts(d) == {"e": {"n0": [0, 1]}, "r": {"n0": [2, 3]}}
    assert not d.reasons
    # Round 3: nothing changed: nobody moves (no resize thrash).
    jobs = after(jobs, d)
    assert decide(jobs) == d
    # Round 4: r ended: e grows back to 4.
    jobs = [j for j in after(jobs, d) if j.id != "r"]
    d = decide(jobs)
    assert as_dicts(d) == {"e": {"n0": [0, 1, 2, 3]}}


@pytest.mark.parametrize("r_priority", [0, 1, 2])
def test_any_waiting_job_takes_borrowed_devices_whatever_its_priority(r_priority):
    # e (priority 1) holds 4, asks for 1: 3 borrowed. r needs 3: fits in the
    # borrowed devices whether it ranks below, level with or above e; e keeps
    # its request and its lowest device.
    jobs = [elastic(priority=1, allocation=alloc(n0=[0, 1, 2, 3])), job("r", 3, priority=r_priority, submit_time=1)]
    d = decide(jobs)
    assert as_dicts(d) == {"e": {"n0": [0]}, "r": {"n0": [1, 2, 3]}}


def test_borrowed_devices_are_taken_before_anyone_is_preempted():
    # lo (priority 0, rigid 2) holds n0:[0,1]; e (priority 3, asks 1) holds
    # n0:[2,3], 1 borrowed. h (priority 5) needs 1.
    jobs = [
        job("lo", 2, priority=0, allocation=alloc(n0=[0, 1])),
        elastic(priority=3, allocation=alloc(n0=[2, 3])),
        job("h", 1, priority=5, submit_time=1),
    ]
    # Elastic: h takes e's borrowed device; e shrinks to n0:[2]; lo is untouched.
    d = decide(jobs)
    assert as_dicts(d) == {"lo": {"n0": [0, 1]}, "e": {"n0": [2]}, "h": {"n0": [3]}}
    # elastic=False: e keeps both devices, so h preempts lo, the lowest
    # priority; lo (2) no longer fits the 1 device left: Resources.
    d = decide(jobs, elastic=False)
    assert as_dicts(d) == {"e": {"n0": [2, 3]}, "h": {"n0": [0]}}
    assert dict(d.reasons) == {"lo": R}


def test_below_its_request_an_elastic_job_is_preempted_entirely():
    # e (priority 0) asks for 2 of [1, 4] and holds 4: 2 borrowed. h (priority
    # 5) needs 3 > 2 borrowed: e, strictly lower, is preempted (not shrunk to
    # its minimum); h takes 3; e (2) does not fit the 1 left: Resources.
    jobs = [job("e", 2, lo=1, hi=4, allocation=alloc(n0=[0, 1, 2, 3])), job("h", 3, priority=5, submit_time=1)]
    d = decide(jobs)
    assert as_dicts(d) == {"h": {"n0": [0, 1, 2]}}
    assert dict(d.reasons) == {"e": R}


def test_borrowed_devices_that_do_not_suffice_stay_with_the_lender():
    # e holds 4 (asks 1); w (same priority) needs 4 > 3 borrowed and cannot
    # preempt e: w waits, and e keeps all its devices instead of being shrunk
    # for nobody.
    jobs = [elastic(allocation=alloc(n0=[0, 1, 2, 3])), job("w", 4, submit_time=1)]
    d = decide(jobs)
    assert as_dicts(d) == {"e": {"n0": [0, 1, 2, 3]}}
    assert dict(d.reasons) == {"w": R}


# --- growth ----------------------------------------------------------------------


def test_a_job_waiting_for_resources_stops_growth():
    # e holds n0:[0,1] (asks 1, 1 borrowed); pin (not preemptible) holds n0:[2];
    # n0:[3] is free. w (4) does not fit even with the borrowed device (3 < 4):
    # it waits for Resources, so e keeps its 2 devices and does not grow into
    # the free one (w should get it when more devices free up).
    running = [elastic(allocation=alloc(n0=[0, 1])), job("pin", 1, preemptible=False, allocation=alloc(n0=[2]))]
    d = decide([*running, job("w", 4, submit_time=1)])
    assert as_dicts(d) == {"e": {"n0": [0, 1]}, "pin": {"n0": [2]}}
    assert dict(d.reasons) == {"w": R}
    # Without w, e grows into the free device (and restarts on n0:[0,1,3]).
    d = decide(running)
    assert as_dicts(d) == {"e": {"n0": [0, 1, 3]}, "pin": {"n0": [2]}}


def test_an_unschedulable_job_does_not_stop_growth():
    d = decide([elastic(allocation=alloc(n0=[0])), job("huge", 8, submit_time=1)])
    assert as_dicts(d) == {"e": {"n0": [0, 1, 2, 3]}}


def test_growth_goes_in_priority_order():
    # Both ask for 1 of [1, 4]: each gets 1, then b (priority 1) takes the 2
    # spare devices; a stays at 1. Placement: b (3) first, n0:[0,1,2].
    d = decide([elastic("a", priority=0), elastic("b", priority=1, submit_time=1)])
    assert as_dicts(d) == {"b": {"n0": [0, 1, 2]}, "a": {"n0": [3]}}


def test_growth_stops_at_max_gpus():
    # e may use at most 2: the last device stays free.
    d = decide([job("e", 1, lo=1, hi=2), job("r", 1, submit_time=1)])
    assert as_dicts(d) == {"e": {"n0": [0, 1]}, "r": {"n0": [2]}}


def test_min_growth_spares_a_running_job_a_restart_for_too_little():
    # e runs on n0:[0,1]; pin holds n0:[2]: 1 device free.
    jobs = [elastic(allocation=alloc(n0=[0, 1])), job("pin", 1, preemptible=False, allocation=alloc(n0=[2]))]
    assert as_dicts(decide(jobs, min_growth=2)) == {"e": {"n0": [0, 1]}, "pin": {"n0": [2]}}
    assert as_dicts(decide(jobs, min_growth=1)) == {"e": {"n0": [0, 1, 3]}, "pin": {"n0": [2]}}
    # A job that starts this round restarts nothing: it takes any spare device.
    starting = [elastic(), job("pin", 2, preemptible=False, allocation=alloc(n0=[2, 3]))]
    assert as_dicts(decide(starting, min_growth=3)) == {"e": {"n0": [0, 1]}, "pin": {"n0": [2, 3]}}


def test_a_non_preemptible_elastic_job_neither_lends_nor_grows():
    # A resize is a restart: a job that may not be stopped keeps exactly its devices.
    jobs = [elastic(preemptible=False, allocation=alloc(n0=[0, 1])), job("r", 3, submit_time=1)]
    d = decide(jobs)
    assert as_dicts(d) == {"e": {"n0": [0, 1]}}
    assert dict(d.reasons) == {"r": R}
    d = decide(jobs[:1])
    assert as_dicts(d) == {"e": {"n0": [0, 1]}}


# --- elastic=False and options ---------------------------------------------------


def test_elastic_false_gives_exactly_the_request():
    assert as_dicts(decide([elastic()], elastic=False)) == {"e": {"n0": [0]}}
    # A running job holding more than its request keeps it; a newcomer waits.
    jobs = [elastic(allocation=alloc(n0=[0, 1, 2, 3])), job("r", 2, submit_time=1)]
    d = decide(jobs, elastic=False)
    assert as_dicts(d) == {"e": {"n0": [0, 1, 2, 3]}}
    assert dict(d.reasons) == {"r": R}


def test_options_are_checked_and_shown():
    assert "elastic" in policies.options("priority") and "min_growth" in policies.options("priority")
    assert policies.get("priority").elastic is True
    assert "elastic=False" in repr(policies.get("priority", elastic=False))
    with pytest.raises(UserError, match="min_growth"):
        policies.get("priority", min_growth=0)
    with pytest.raises(UserError, match="elastic"):
        policies.get("priority", elastic="yes")


# --- properties over random rounds with many elastic jobs ------------------------


@st.composite
def elastic_rounds(draw: st.DrawFn) -> tuple[list[JobView], ClusterView]:
    """1-3 nodes of 1-8 devices, 0-8 jobs, mostly elastic, running ones often above their request."""
    sizes = draw(st.lists(st.integers(1, 8), min_size=1, max_size=3))
    cluster = ClusterView(tuple(Node(f"n{i}", s) for i, s in enumerate(sizes)))
    free = [(f"n{i}", d) for i, s in enumerate(sizes) for d in range(s)]
    draw(st.randoms(use_true_random=False)).shuffle(free)
    jobs = []
    for i in range(draw(st.integers(0, 8))):
        lo = draw(st.integers(1, 4))
        hi = lo + draw(st.sampled_from([0, 1, 3, 8]))
        gpus = draw(st.integers(lo, hi))
        held = Allocation()
        if draw(st.booleans()):
            k = draw(st.integers(lo, hi))
            if k <= len(free):
                taken, free = free[:k], free[k:]
                by_node: dict[str, list[int]] = {}
                for node, dev in taken:
                    by_node.setdefault(node, []).append(dev)
                held = Allocation.of(by_node)
        jobs.append(
            JobView(
                id=f"j{i}",
                priority=draw(st.integers(0, 2)),
                submit_time=float(i),
                min_gpus=lo,
                max_gpus=hi,
                gpus=gpus,
                allocation=held,
                preemptible=draw(st.booleans() | st.just(True)),
            )
        )
    return jobs, cluster


PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(case=elastic_rounds(), min_growth=st.integers(1, 3))
def test_elastic_rounds_keep_every_invariant(case, min_growth):
    jobs, cluster = case
    total = cluster.total_devices
    sizes = {n.name: n.num_devices for n in cluster.nodes}
    decision = decide(jobs, cluster, min_growth=min_growth)
    started = [j for j in jobs if j.id in decision.allocations and not holds_valid(j, sizes)]
    waits = R in decision.reasons.values()
    for j in jobs:
        got = decision.allocation(j.id).num_devices
        if holds_valid(j, sizes):
            had = j.allocation.num_devices
            if not got:  # preempted: only for a started job of strictly higher priority
                assert j.preemptible and any(s.priority > j.priority for s in started), j.id
            elif not j.preemptible:
                assert decision.allocation(j.id) == j.allocation
            else:  # lending never takes a job below its request (or what it held, if less)
                assert got >= min(had, rigid_count(j, total)), j.id
            if got and waits:  # nothing grows while a job waits for Resources
                assert got <= max(had, rigid_count(j, total)), j.id
        elif got and waits:
            assert got == rigid_count(j, total), j.id
    # Work-conserving: spare devices with nobody waiting for them mean every
    # elastic job that may grow is at its maximum.
    used = sum(a.num_devices for a in decision.allocations.values())
    if min_growth == 1 and not waits and used < total:
        for j in jobs:
            if j.id in decision.allocations and j.elastic and (j.preemptible or not holds_valid(j, sizes)):
                assert decision.allocation(j.id).num_devices == min(j.max_gpus, total), j.id


@PROPERTY
@given(case=elastic_rounds())
def test_a_round_with_nothing_new_changes_nothing(case):
    # Applying a decision and scheduling again must not resize or move anyone:
    # growth and lending would otherwise restart jobs every round.
    jobs, cluster = case
    first = decide(jobs, cluster)
    again = decide(after(jobs, first), cluster)
    assert again.allocations == first.allocations
