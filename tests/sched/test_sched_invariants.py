"""Invariants every registered policy keeps, over random clusters and job sets (hypothesis)."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sched_helpers import check_decision

from corral.goodput import DEFAULT_MODEL, GoodputModel, ThroughputParams
from corral.sched import policies
from corral.sched.policies._common import holds_valid, rigid_count, schedulable
from corral.sched.policies.backfill import reservation
from corral.sched.policies.fifo import fifo_key
from corral.sched.types import Allocation, ClusterView, JobView, Node

MODELS = [
    None,
    DEFAULT_MODEL,
    GoodputModel(
        ThroughputParams(0.01, 0.002, 0.05, 0.01, 0.2, 0.05, 1.2), init_batch=64, max_batch=1024, noise_scale=300
    ),
]
SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def rounds(draw: st.DrawFn) -> tuple[float, list[JobView], ClusterView]:
    """A cluster of 1-5 nodes (1-8 devices each) and 0-12 jobs, some running on valid disjoint devices."""
    sizes = draw(st.lists(st.integers(1, 8), min_size=1, max_size=5))
    cluster = ClusterView(tuple(Node(f"n{i}", s) for i, s in enumerate(sizes)))
    rng = draw(st.randoms(use_true_random=False))
    free = [(f"n{i}", d) for i, s in enumerate(sizes) for d in range(s)]
    rng.shuffle(free)
    now = draw(st.floats(0, 10_000))
    jobs = []
    for i in range(draw(st.integers(0, 12))):
        lo = draw(st.integers(1, 6) | st.integers(1, 48))
        hi = lo + draw(st.sampled_from([0, 0, 1, 3, 8]))
        gpus = draw(st.integers(lo, hi))
        alloc = Allocation()
        if draw(st.booleans()):
            k = draw(st.integers(lo, hi))
            if k <= len(free):
                taken, free = free[:k], free[k:]
                by_node: dict[str, list[int]] = {}
                for node, dev in taken:
                    by_node.setdefault(node, []).append(dev)
                alloc = Allocation.of(by_node)
        duration = draw(st.none() | st.floats(1, 5_000))
        jobs.append(
            JobView(
                id=f"j{i}",
                priority=draw(st.integers(0, 3)),
                submit_time=draw(st.floats(0, now)),
                min_gpus=lo,
                max_gpus=hi,
                gpus=gpus,
                attained_service=draw(st.floats(0, 50_000)),
                progress=draw(st.none() | st.floats(0, 1)),
                duration_estimate=duration,
                throughput=draw(st.sampled_from(MODELS)),
                allocation=alloc,
                run_time=draw(st.floats(0, 5_000)),
                preemptible=draw(st.booleans()),
            )
        )
    return now, jobs, cluster


@pytest.mark.parametrize("name", policies.available())
@SETTINGS
@given(case=rounds())
def test_decisions_respect_the_cluster_and_the_jobs(name, case):
    now, jobs, cluster = case
    policy = policies.get(name)
    decision = policy.schedule(now, jobs, cluster)
    check_decision(decision, jobs, cluster)
    sizes = {n.name: n.num_devices for n in cluster.nodes}
    for job in jobs:
        if not holds_valid(job, sizes):
            continue
        got = decision.allocation(job.id)
        if not job.preemptible:
            assert got == job.allocation, f"{name} moved non-preemptible {job.id}"
        if got and got.num_devices == job.allocation.num_devices:
            assert got == job.allocation, f"{name} migrated {job.id} without resizing it"
    # Deterministic: the same round gives the same decision.
    assert policy.schedule(now, jobs, cluster) == decision


@pytest.mark.parametrize("name", ["fifo", "fifo-backfill"])
@SETTINGS
@given(case=rounds())
def test_non_preemptive_policies_keep_every_running_job(name, case):
    now, jobs, cluster = case
    decision = policies.get(name).schedule(now, jobs, cluster)
    sizes = {n.name: n.num_devices for n in cluster.nodes}
    for job in jobs:
        if holds_valid(job, sizes):
            assert decision.allocation(job.id) == job.allocation


@SETTINGS
@given(case=rounds())
def test_priority_preempts_only_for_strictly_higher_priority(case):
    now, jobs, cluster = case
    decision = policies.get("priority").schedule(now, jobs, cluster)
    sizes = {n.name: n.num_devices for n in cluster.nodes}
    started = [j for j in jobs if j.id in decision.allocations and not holds_valid(j, sizes)]
    for job in jobs:
        if holds_valid(job, sizes) and job.id not in decision.allocations:
            assert job.preemptible
            assert any(s.priority > job.priority for s in started), f"{job.id} preempted for no one above it"


def head_reservation(now: float, jobs: list[JobView], cluster: ClusterView, running: list[JobView], head: JobView):
    total = cluster.total_devices
    held = [(j.remaining_estimate(), j.allocation.num_devices or rigid_count(j, total)) for j in running]
    free = total - sum(k for _, k in held)
    return reservation(now, rigid_count(head, total), free, held)


@SETTINGS
@given(case=rounds())
def test_backfill_never_delays_the_head_reservation(case):
    now, jobs, cluster = case
    total = cluster.total_devices
    decision = policies.get("fifo-backfill").schedule(now, jobs, cluster)
    sizes = {n.name: n.num_devices for n in cluster.nodes}
    running = [j for j in jobs if holds_valid(j, sizes)]
    waiting = sorted((j for j in jobs if not holds_valid(j, sizes) and schedulable(j, total)), key=fifo_key)
    head_index = next((i for i, j in enumerate(waiting) if j.id not in decision.allocations), None)
    if head_index is None:
        return  # nothing waits: no reservation to protect
    head = waiting[head_index]
    # Jobs ahead of the head start in FIFO order before it is chosen; jobs behind
    # it that run were backfilled.
    ahead = [j for j in waiting[:head_index] if j.id in decision.allocations]
    behind = [j for j in waiting[head_index + 1 :] if j.id in decision.allocations]
    started_counts = {j.id: decision.allocation(j.id).num_devices for j in ahead + behind}

    def as_running(js: list[JobView]) -> list[JobView]:
        return [JobView(**{**j.__dict__, "allocation": decision.allocation(j.id)}) for j in js]

    before, _ = head_reservation(now, jobs, cluster, running + as_running(ahead), head)
    after, _ = head_reservation(now, jobs, cluster, running + as_running(ahead) + as_running(behind), head)
    assert all(k > 0 for k in started_counts.values())
    if math.isfinite(before):
        assert after <= before, f"backfilling moved the head's start from {before} to {after}"
