"""The simulator and the live service give a policy the same views and take the same actions.

One workload runs in the simulator; the live scheduler (FakeExecutor, clock
set to the simulator's) replays it: jobs arrive at the same times, runs end
when the simulated jobs completed, and each running job "reports" the
progress the simulator computed (as jobs report theirs through the Job API).
Everything else in the views, attained service, run time, restarts,
allocations, duration estimates, is derived by each path on its own. At
every round both must hand the policy the same JobViews and get the same
actions out of corral.sched.plan.
"""

from __future__ import annotations

import dataclasses

import pytest

from corral.sched import policies
from corral.sched.plan import plan
from corral.sched.types import ClusterView, JobView
from corral.sim.engine import SimConfig, Simulator
from corral.sim.traces import TraceJob
from tests.control.loop_helpers import Clock, make_loop


class Recording:
    """Wraps a policy and records what it saw and decided."""

    def __init__(self, inner) -> None:
        self.inner, self.name = inner, inner.name
        self.rounds: list[tuple[float, list[JobView], list]] = []

    def schedule(self, now, jobs, cluster):
        decision = self.inner.schedule(now, jobs, cluster)
        current = {j.id: j.allocation for j in jobs if j.allocation}
        self.rounds.append((now, list(jobs), plan(decision, current)))
        return decision


TRACE = [
    # id, submit, gpus, min, max, duration, priority, user
    ("a", 0, 2, 2, 2, 400, 0, "ann"),
    ("b", 0, 4, 4, 4, 300, 0, "bob"),
    ("c", 50, 1, 1, 1, 200, 5, "ann"),
    ("d", 60, 2, 1, 4, 500, 0, "cat"),
    ("e", 120, 4, 4, 4, 250, 10, "bob"),
    ("f", 130, 1, 1, 1, 100, 0, "cat"),
    ("g", 400, 3, 3, 3, 150, 2, "ann"),
    ("h", 410, 2, 1, 8, 600, 0, "bob"),
    ("i", 700, 8, 8, 8, 100, 1, "cat"),
    ("k", 900, 1, 1, 1, 50, 0, "ann"),
]


def _normal(view: JobView, ids: dict[str, str]) -> dict:
    d = {f.name: getattr(view, f.name) for f in dataclasses.fields(view) if f.name != "extra"}
    d["id"] = ids.get(view.id, view.id)
    for k in ("attained_service", "run_time", "progress", "submit_time", "duration_estimate"):
        if d[k] is not None:
            d[k] = round(float(d[k]), 6)
    return d


@pytest.mark.parametrize("name", policies.available())
def test_simulator_and_live_service_give_the_policy_the_same_views_and_actions(tmp_path, name: str) -> None:
    cluster = ClusterView.uniform(2, 4)
    trace = [
        TraceJob(id=i, submit_time=t, gpus=g, min_gpus=lo, max_gpus=hi, duration=dur, priority=p, user=u)
        for i, t, g, lo, hi, dur, p, u in TRACE
    ]
    sim_policy = Recording(policies.get(name))
    cfg = SimConfig(round_s=1e9, restart_overhead_s=0.0, event_rounds=True)
    result = Simulator(trace, sim_policy, cluster, cfg).run()
    finish = {j.id: j.finish_time for j in result.jobs}
    assert all(t is not None for t in finish.values())

    loop = make_loop(tmp_path, devices=4, nodes=2, policy=name)
    loop.clock = Clock(0.0)
    loop.executor.clock = loop.clock
    live_policy = Recording(policies.get(name))
    loop.sched = loop._new()
    loop.sched.clock = loop.clock
    loop.sched.policy = live_policy
    db_id: dict[str, int] = {}
    name_of: dict[str, str] = {}
    for now, views, sim_actions in sim_policy.rounds:
        loop.clock.t = now
        for tj in trace:  # arrivals
            if tj.submit_time <= now and tj.id not in db_id:
                jid = loop.submit(
                    tj.id,
                    tj.gpus,
                    lo=tj.min_gpus,
                    hi=tj.max_gpus,
                    user=tj.user,
                    priority=tj.priority,
                    duration_estimate=tj.duration,
                )
                with loop.store.session() as s:
                    from corral.control.store import Job

                    s.get(Job, jid).submit_time = tj.submit_time
                db_id[tj.id], name_of[str(jid)] = jid, tj.id
        for tid, jid in db_id.items():  # completions
            if finish[tid] <= now and loop.executor.live(jid) is not None:
                loop.executor.finish(jid, 0)
        for v in views:  # progress reports
            loop.store.add_metrics(db_id[v.id], 1, {"progress": v.progress})
        before = len(live_policy.rounds)
        loop.sched.round()
        loop.sched.round()  # the same instant again: nothing left to do
        live = live_policy.rounds[before]
        assert live[0] == now
        assert [_normal(v, name_of) for v in live[1]] == [_normal(v, {}) for v in views], f"views differ at t={now}"
        live_actions = [dataclasses.replace(a, job_id=name_of[a.job_id]) for a in live[2]]
        assert live_actions == sim_actions, f"actions differ at t={now}"
        # The second round decides nothing new: what the first one planned has happened.
        for _, _, actions in live_policy.rounds[before + 1 :]:
            assert all(type(a).__name__ == "Keep" for a in actions), (now, actions)
    assert len(sim_policy.rounds) >= 10
