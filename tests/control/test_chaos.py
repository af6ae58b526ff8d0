"""Chaos: thousands of seeded random events on the FakeExecutor, invariants checked after every step.

Events: submits (rigid and elastic, some deaf to SIGTERM, some with timeouts),
cancels, runs that succeed, fail or exit 75 on their own, lost runs, clock
jumps, and crashes of the service at any point: after the executor acted but
before the store committed, or inside a commit. A crash is a BaseException
(nothing in the loop may swallow it, as nothing survives a SIGKILL); the
service is then restarted on the same store and the same (still running) runs.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest
from sqlalchemy import select

from corral.control.executors.fake import FakeExecutor
from corral.control.states import JobState
from corral.control.store import Event, Job, Store
from tests.control.loop_helpers import FakeLoop, make_loop


class Crash(BaseException):
    """The service process dies here."""


class ChaosExecutor(FakeExecutor):
    """A FakeExecutor whose calls may kill the service right after they acted."""

    def __init__(self, *args, rng: random.Random, p: float, **kw) -> None:
        super().__init__(*args, **kw)
        self.rng, self.p, self.armed = rng, p, False

    def _maybe(self) -> None:
        if self.armed and self.rng.random() < self.p:
            raise Crash

    def start(self, *args, **kw):
        handle = super().start(*args, **kw)
        self._maybe()
        return handle

    def stop(self, handle, grace):
        super().stop(handle, grace)
        self._maybe()

    def release(self, handle):
        self._maybe()
        super().release(handle)


def _check(loop: FakeLoop, terminal: dict[int, str], quiet: bool) -> None:
    """The invariants. `quiet`: the last round finished without a crash (store and executor agree)."""
    ex = loop.executor
    with loop.store.session() as s:
        jobs = {j.id: j for j in s.scalars(select(Job))}
        events = list(s.scalars(select(Event).order_by(Event.id)))
    # No job is lost; a terminal state is final.
    for jid, state in terminal.items():
        assert jobs[jid].state == state, f"job {jid} left terminal state {state} for {jobs[jid].state}"
    for jid, job in jobs.items():
        if JobState(job.state).is_terminal:
            terminal.setdefault(jid, job.state)
            assert ex.live(jid) is None or not quiet, f"terminal job {jid} still has a live run"
    # No job runs twice at once; no device is given twice.
    live = ex.live_runs()
    per_job = Counter(r.handle.job_id for r in live)
    assert all(n == 1 for n in per_job.values()), per_job
    devices = [d for r in live for d in r.allocation.devices()]
    assert len(devices) == len(set(devices)), "a device is held by two live runs"
    assert len(devices) <= ex.cluster().total_devices
    if quiet:
        for jid, job in jobs.items():
            run = ex.live(jid)
            if job.state == "RUNNING":  # its run is alive, or ended and watched until its end is recorded
                assert (jid, job.attempt) in ex.watched, f"RUNNING job {jid} without its run"
            elif job.state in ("PENDING", "RESTARTING") and job.intent != "start":
                assert run is None, f"{job.state} job {jid} has a live run"
    # Counters equal the events.
    by_job: dict[int, Counter[str]] = {}
    for e in events:
        by_job.setdefault(e.job_id, Counter())[e.dst] += 1
    for jid, job in jobs.items():
        c = by_job.get(jid, Counter())
        assert c["RESTARTING"] == job.restarts, (jid, c, job.restarts)
        assert c["PREEMPTED"] == job.preemptions + job.resizes, (jid, c, job.preemptions, job.resizes)
        assert c["RUNNING"] == sum(1 for h in ex.started if h.job_id == jid), (jid, c)
        assert sum(c[s] for s in ("SUCCEEDED", "FAILED", "CANCELLED")) <= 1


@pytest.mark.parametrize("seed", [1, 2])
def test_chaos(tmp_path, seed: int, monkeypatch) -> None:
    rng = random.Random(seed)
    loop = make_loop(tmp_path, devices=4, nodes=2, policy="priority")
    loop.executor = ChaosExecutor(loop.executor.cluster(), loop.clock, rng=rng, p=0.03)
    loop.sched = loop._new()
    ex: ChaosExecutor = loop.executor  # type: ignore[assignment]

    real_transition = Store.transition

    def transition(self, *args, **kw):
        if ex.armed and rng.random() < 0.01:
            raise Crash
        return real_transition(self, *args, **kw)

    monkeypatch.setattr(Store, "transition", transition)
    terminal: dict[int, str] = {}
    ids: list[int] = []
    crashes = 0
    steps = 1200
    for step in range(steps):
        r = rng.random()
        ex.armed = False
        if r < 0.12 and step < steps - 300:
            lo = rng.choice([1, 1, 2])
            hi = rng.choice([lo, lo, 4, 8])
            spec = {"priority": rng.choice([0, 0, 5, 10]), "max_restarts": rng.choice([0, 1, 2])}
            if rng.random() < 0.2:
                spec["timeout"] = rng.choice([30, 100])
            jid = loop.submit(f"j{step}", gpus=lo, lo=lo, hi=hi, **spec)
            if rng.random() < 0.25:
                ex.ignore_sigterm.add(jid)
            ids.append(jid)
        elif r < 0.17 and ids:
            ex.armed = True
            try:
                loop.sched.cancel(rng.choice(ids))
            except Crash:
                crashes += 1
                ex.armed = False
                loop.restart()
        elif r < 0.40:
            live = ex.live_runs()
            if live:
                run = rng.choice(live)
                roll = rng.random()
                if roll < 0.1:
                    ex.lose(run.handle.job_id)
                else:
                    ex.finish(run.handle.job_id, rng.choice([0, 0, 0, 1, 75]))
        quiet = False
        ex.armed = True
        try:
            loop.round(rng.choice([0.0, 1.0, 5.0, 12.0]))
            quiet = True
        except Crash:
            crashes += 1
            ex.armed = False
            loop.restart()
        ex.armed = False
        _check(loop, terminal, quiet)
    # Quiescence: no more chaos; every run ends, every job reaches a terminal state.
    ex.armed = False
    for _ in range(400):
        for run in ex.live_runs():
            ex.finish(run.handle.job_id, 0)
        loop.round(15)
        _check(loop, terminal, True)
        if all(JobState(loop.job(j).state).is_terminal for j in ids):
            break
    states = Counter(loop.job(j).state for j in ids)
    assert sum(states.values()) == len(ids) and set(states) <= {"SUCCEEDED", "FAILED", "CANCELLED"}, states
    assert crashes >= 10  # the run did exercise the crash paths
    assert loop.executor.live_runs() == []
