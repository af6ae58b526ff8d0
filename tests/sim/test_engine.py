"""The simulation engine: hand-computed schedules, invariants, contract checks, termination."""

from __future__ import annotations

import pytest

from corral.sched import policies
from corral.sched.types import Allocation, ClusterView
from corral.sim.engine import InvalidDecision, JobStatus, SimConfig, simulate
from corral.sim.traces import TraceJob, load_trace
from tests.sim.helpers import TRACES, FixedPolicy, IdlePolicy, job

ONE_NODE = ClusterView.uniform(1, 4)


def by_id(result):  # noqa: ANN001, ANN201 - SimResult -> {id: JobResult}
    return {j.id: j for j in result.jobs}


def test_fifo_matches_hand_computed_schedule() -> None:
    # A holds 2 of 4 GPUs until 100; B (4 GPUs) waits for it and, strict FIFO,
    # C (2 GPUs) waits behind B although 2 GPUs are free: C runs 150-180.
    jobs = [job("a", 0, 2, 100), job("b", 10, 4, 50), job("c", 20, 2, 30)]
    r = by_id(simulate(jobs, policies.get("fifo"), ONE_NODE))
    assert {k: v.jct for k, v in r.items()} == {"a": 100, "b": 140, "c": 160}
    assert {k: v.first_start for k, v in r.items()} == {"a": 0, "b": 100, "c": 150}
    assert all(v.restarts == 0 and v.preemptions == 0 for v in r.values())


def test_periodic_rounds_only_start_jobs_on_the_round_grid() -> None:
    # Without event rounds, B is started by the round at 120 and C by the one at 180.
    jobs = [job("a", 0, 2, 100), job("b", 10, 4, 50), job("c", 20, 2, 30)]
    r = by_id(simulate(jobs, policies.get("fifo"), ONE_NODE, SimConfig(event_rounds=False)))
    assert {k: v.jct for k, v in r.items()} == {"a": 100, "b": 160, "c": 190}


def test_priority_preemption_pays_the_restart_overhead() -> None:
    # L runs 0-10, is preempted by H (10-60), resumes at 60 and computes again
    # from 90 (30 s restart) for its remaining 90 s: it finishes at 180.
    jobs = [job("low", 0, 4, 100, priority=0), job("high", 10, 4, 50, priority=1)]
    r = by_id(simulate(jobs, policies.get("priority"), ONE_NODE, SimConfig(restart_overhead_s=30)))
    assert r["high"].jct == pytest.approx(50)
    assert r["low"].jct == pytest.approx(180)
    assert (r["low"].preemptions, r["low"].restarts) == (1, 1)
    assert (r["high"].preemptions, r["high"].restarts) == (0, 0)
    # Device-seconds held: 4 x (10 + 30 + 90) for low, 4 x 50 for high.
    assert r["low"].attained_service == pytest.approx(4 * 130)
    assert r["high"].attained_service == pytest.approx(4 * 50)


def test_srtf_preempts_the_longer_job() -> None:
    jobs = [job("long", 0, 4, 300), job("short", 100, 4, 50)]
    r = by_id(simulate(jobs, policies.get("srtf"), ONE_NODE, SimConfig(restart_overhead_s=30)))
    assert r["short"].jct == pytest.approx(50)
    assert r["long"].jct == pytest.approx(100 + 50 + 30 + 200)


def test_start_overhead_is_charged_only_when_asked() -> None:
    jobs = [job("a", 0, 1, 100)]
    plain = simulate(jobs, policies.get("fifo"), ONE_NODE, SimConfig(restart_overhead_s=30))
    charged = simulate(jobs, policies.get("fifo"), ONE_NODE, SimConfig(restart_overhead_s=30, start_overhead=True))
    assert plain.jobs[0].jct == 100
    assert charged.jobs[0].jct == 130


@pytest.mark.parametrize(("placer", "expected"), [("pack", 100.0), ("spread", 125.0)])
def test_a_job_spread_over_more_nodes_than_needed_runs_slower(placer: str, expected: float) -> None:
    # 2 GPUs fit one node; spread puts them on two, which costs the 20% cross-node penalty.
    r = simulate([job("a", 0, 2, 100)], policies.get("fifo", placer=placer), ClusterView.uniform(2, 4))
    assert r.jobs[0].jct == pytest.approx(expected)


def test_a_job_that_needs_two_nodes_pays_no_penalty() -> None:
    r = simulate([job("a", 0, 8, 100)], policies.get("fifo"), ClusterView.uniform(2, 4))
    assert r.jobs[0].jct == pytest.approx(100)


def test_job_larger_than_the_cluster_is_unschedulable_and_the_rest_finish() -> None:
    jobs = [job("huge", 0, 8, 100), job("ok", 5, 2, 10)]
    r = simulate(jobs, policies.get("fifo"), ONE_NODE)
    res = by_id(r)
    assert res["huge"].status is JobStatus.UNSCHEDULABLE
    assert res["ok"].status is JobStatus.FINISHED and res["ok"].jct == 10
    assert r.stopped == "done"


def test_a_policy_that_never_schedules_stops_with_jobs_unfinished() -> None:
    jobs = [job("a", 0, 1, 100), job("b", 50, 1, 100)]
    r = simulate(jobs, IdlePolicy(), ONE_NODE, SimConfig(stall_rounds=20))
    assert r.stopped == "stalled"
    assert [j.status for j in r.jobs] == [JobStatus.UNFINISHED] * 2
    assert r.rounds < 30


def test_max_time_stops_the_run() -> None:
    r = simulate([job("a", 0, 1, 1000)], policies.get("fifo"), ONE_NODE, SimConfig(max_time=500))
    assert r.stopped == "max_time" and r.jobs[0].status is JobStatus.UNFINISHED


@pytest.mark.parametrize(
    ("alloc", "message"),
    [
        ({"a": Allocation.of({"n0": [0, 1]}), "b": Allocation.of({"n0": [1]})}, "given twice"),
        ({"a": Allocation.of({"n0": [0]})}, "outside"),
        ({"a": Allocation.of({"n9": [0, 1]})}, "unknown node"),
        ({"a": Allocation.of({"n0": [3, 4]})}, "no device 4"),
        ({"a": Allocation((("n0", (1, 1)),))}, "given twice"),
    ],
)
def test_invalid_decisions_raise(alloc: dict[str, Allocation], message: str) -> None:
    jobs = [job("a", 0, 2, 10), job("b", 0, 1, 10)]
    with pytest.raises(InvalidDecision, match=message):
        simulate(jobs, FixedPolicy(alloc), ONE_NODE)


def test_allocation_for_an_unknown_job_raises() -> None:
    class Ghost(FixedPolicy):
        def schedule(self, now, jobs, cluster):  # noqa: ANN001, ANN201
            from corral.sched.types import Decision

            return Decision({"ghost": Allocation.of({"n0": [0]})})

    with pytest.raises(InvalidDecision, match="ghost"):
        simulate([job("a", 0, 1, 10)], Ghost({}), ONE_NODE)


POLICIES = ["fifo", "fifo-backfill", "priority", "srtf", "tiresias", "themis", "pollux"]


@pytest.mark.parametrize("name", POLICIES)
def test_every_job_finishes_once_and_never_beats_its_ideal_time(name: str) -> None:
    jobs = load_trace("synthetic:150:3", devices=16)
    r = simulate(jobs, policies.get(name), ClusterView.uniform(4, 4))
    assert r.stopped == "done"
    assert len(r.jobs) == len(jobs) and len({j.id for j in r.jobs}) == len(jobs)
    for j in r.jobs:
        assert j.status is JobStatus.FINISHED
        assert j.jct >= j.ideal_duration - 1e-6
        assert j.attained_service >= j.gpus * j.ideal_duration - 1e-6
    assert max(r.used) <= r.capacity


@pytest.mark.parametrize("name", ["tiresias", "pollux"])
def test_same_seed_same_result(name: str) -> None:
    jobs = load_trace("synthetic:120:7", devices=16)
    a = simulate(jobs, policies.get(name), ClusterView.uniform(4, 4))
    b = simulate(load_trace("synthetic:120:7", devices=16), policies.get(name), ClusterView.uniform(4, 4))
    assert a.jobs == b.jobs
    assert list(a.times) == list(b.times) and list(a.used) == list(b.used)


def test_elastic_job_runs_at_the_devices_it_gets() -> None:
    # Asks for 8 (work = 100 s at 8), may run on 2..8; on a 4-GPU node it runs at half speed.
    elastic = TraceJob(id="e", submit_time=0, gpus=8, min_gpus=2, max_gpus=8, duration=100)
    r = simulate([elastic], policies.get("fifo"), ONE_NODE)
    assert r.jobs[0].jct == pytest.approx(200)


@pytest.mark.skipif(not (TRACES / "pollux").is_dir(), reason="shared Pollux traces not present")
def test_pollux_workload_jobs_finish_under_rigid_and_elastic_policies() -> None:
    jobs = load_trace("pollux:workload-1", traces_dir=TRACES)[:12]
    cluster = ClusterView.uniform(4, 4)
    for name in ("tiresias", "pollux"):
        r = simulate(jobs, policies.get(name), cluster, SimConfig(event_rounds=False, start_overhead=True))
        assert r.stopped == "done"
        assert all(j.status is JobStatus.FINISHED for j in r.jobs)
        # Starting costs 30 s, and no job on its requested devices beats its ideal time.
        if name == "tiresias":
            assert all(j.jct >= j.ideal_duration + 30 - 1e-6 for j in r.jobs)
