"""Incremental rounds (IncrementalPolicy) decide exactly what the full computation decides.

A policy instance that is called round after round remembers its last round
and reuses it when few views changed. These tests drive random sequences of
rounds (arrivals, completions, decisions applied or not, views rebuilt or
reused, jobs that are not preemptible or hold odd allocations) and compare
every Decision with the one a fresh instance (no memory) computes.
"""

from __future__ import annotations

import dataclasses
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sched_helpers import check_decision

from corral.sched import policies
from corral.sched.types import EMPTY, Allocation, ClusterView, JobView, Node

INCREMENTAL = ["fifo", "tiresias"]


def _rounds(seed: int, name: str, steps: int = 60):  # noqa: ANN202 - yields (now, views, cluster, policy)
    rng = random.Random(seed)
    cluster = ClusterView(tuple(Node(f"n{i}", rng.randint(1, 8)) for i in range(rng.randint(1, 6))))
    total = cluster.total_devices
    opts = {"thresholds": [50.0, 400.0], "starvation_factor": 2.0} if name == "tiresias" else {}
    policy = policies.get(name, **opts)
    views: dict[str, JobView] = {}
    now, next_id = 0.0, 0
    for _ in range(steps):
        now += rng.choice([0.0, 1.0, 5.0, 30.0])
        for _ in range(rng.choice([0, 0, 0, 1, 1, 2, 5])):  # arrivals
            lo = rng.choice([1, 1, 1, 2, 3, 4, total + 1])
            hi = lo + rng.choice([0, 0, 0, 1, 3])
            views[f"j{next_id}"] = JobView(
                id=f"j{next_id}",
                submit_time=now,
                min_gpus=lo,
                max_gpus=hi,
                gpus=rng.randint(lo, hi),
                preemptible=rng.random() < 0.9,
                run_time=rng.choice([0.0, 0.0, 3.0]),
            )
            next_id += 1
        for job_id in [j for j, v in views.items() if v.allocation and rng.random() < 0.15]:
            del views[job_id]  # completions
        for job_id, v in list(views.items()):
            r = rng.random()
            if v.allocation and r < 0.2:  # a fresh view of a running job: service and run time moved on
                n = v.allocation.num_devices
                views[job_id] = dataclasses.replace(
                    v, attained_service=v.attained_service + 40.0 * n, run_time=v.run_time + 40.0
                )
            elif v.allocation and r < 0.22:  # something odd: an allocation on a node that does not exist
                views[job_id] = dataclasses.replace(v, allocation=Allocation.of({"gone": [0]}))
        decision = policy.schedule(now, list(views.values()), cluster)
        yield now, list(views.values()), cluster, decision
        if rng.random() < 0.9:  # the caller applies the decision (or, sometimes, does not)
            for job_id, v in list(views.items()):
                new = decision.allocation(job_id)
                if new != v.allocation:
                    views[job_id] = dataclasses.replace(v, allocation=new if new else EMPTY)


@pytest.mark.parametrize("name", INCREMENTAL)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1))
def test_every_incremental_round_equals_the_full_computation(name: str, seed: int) -> None:
    for now, views, cluster, decision in _rounds(seed, name):
        opts = {"thresholds": [50.0, 400.0], "starvation_factor": 2.0} if name == "tiresias" else {}
        full = policies.get(name, **opts).schedule(now, views, cluster)  # a fresh instance: no memory
        assert dict(decision.allocations) == dict(full.allocations), now
        assert dict(decision.reasons) == dict(full.reasons), now
        check_decision(decision, views, cluster)


@pytest.mark.parametrize("name", INCREMENTAL)
def test_most_rounds_of_a_steady_queue_take_the_incremental_path(name: str, monkeypatch) -> None:
    policy = policies.get(name)
    full_rounds = []
    original = type(policy).counts
    monkeypatch.setattr(type(policy), "counts", lambda self, *a: full_rounds.append(1) or original(self, *a))
    cluster = ClusterView.uniform(8, 4)
    views = {f"r{i}": JobView(id=f"r{i}", allocation=Allocation.of({f"n{i // 4}": [i % 4]})) for i in range(16)}
    for step in range(50):
        views[f"w{step}"] = JobView(id=f"w{step}", submit_time=float(step))
        decision = policy.schedule(float(step), list(views.values()), cluster)
        for job_id, v in list(views.items()):
            if decision.allocation(job_id) != v.allocation:
                views[job_id] = dataclasses.replace(v, allocation=decision.allocation(job_id))
        views.pop(f"w{step - 3}", None)  # a job ends
    assert len(full_rounds) <= 2


def test_refresh_by_is_when_a_running_tiresias_job_may_change_queue() -> None:
    policy = policies.get("tiresias", thresholds=[100.0, 1000.0], starvation_factor=2.0)
    running = JobView(
        id="a", submit_time=0.0, attained_service=40.0, run_time=20.0, allocation=Allocation.of({"n0": [0, 1]})
    )
    # 60 more device-seconds at 2 devices: it reaches the first threshold in 30 s (a margin early).
    assert 29.9 < policy.refresh_by(20.0, running) - 20.0 < 30.0
    # Waited 60 s, ran 20 s: promoted until its run time reaches 60 / 2 = 30 s, i.e. 10 s from now.
    promoted = dataclasses.replace(running, attained_service=0.0)
    assert 89.9 < policy.refresh_by(80.0, promoted) < 90.0
    assert policies.get("fifo").refresh_by(5.0, running) == float("inf")
    assert policies.get("priority").refresh_by(5.0, running) == 5.0
