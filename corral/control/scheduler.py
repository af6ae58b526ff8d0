"""The live scheduler loop: the same policy objects as the simulator, acting through an executor.

A round: collect runs that ended -> snapshot jobs and cluster -> ask the
policy -> diff the decision with what runs -> preempt, start, restart. Every
state change of a round is written in one transaction.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from corral import PREEMPTED_EXIT_CODE
from corral.control.executor import Executor, LocalExecutor, RunExit
from corral.control.spec import JobSpec
from corral.control.states import JobState
from corral.control.store import Job, Store, hash_token
from corral.sched.types import Allocation, ClusterView, JobView, Policy

log = logging.getLogger("corral.scheduler")

# Persisted in Job.reason while an action is under way, so that a restarted
# service knows why a run it finds ending was stopped.
PREEMPTING, CANCELLING, RESIZING, TIMING_OUT = "Preempting", "Cancelling", "Resizing", "TimingOut"
STOPPING = (PREEMPTING, CANCELLING, RESIZING, TIMING_OUT)


def _alloc(job: Job) -> Allocation:
    return Allocation.of(job.allocation or {})


def _last_lines(path: Path, n: int = 5) -> str:
    try:
        with open(path, "rb") as f:
            lines = deque(f, maxlen=n)
    except OSError:
        return ""
    return b"".join(lines).decode(errors="replace").strip()


class Scheduler:
    """Owns the decisions of the live service: who runs where, when to preempt, restart or give up."""

    def __init__(self, store: Store, executor: Executor, policy: Policy, *, grace: float = 10.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.executor = executor
        self.policy = policy
        self.grace = grace
        self.clock = clock
        self._last_round: float | None = None
        self._extra_env: dict[str, str] = {}
        # The API thread (cancel) and the loop thread (round) both act on the
        # executor; one lock keeps each action whole.
        self.lock = threading.RLock()

    # -- actions requested from outside (API) ----------------------------------

    def cancel(self, job_id: int) -> str:
        """Cancel a job: at once when it waits, by stopping its run when it runs. Returns its new state."""
        with self.lock, self.store.session() as s:
            job = s.get(Job, job_id)
            if job is None or JobState(job.state).is_terminal:
                return job.state if job else ""
            if JobState(job.state).holds_devices:
                job.reason = CANCELLING
                self.executor.stop(job.id, self.grace)
                return job.state
            self.store.transition(s, job, JobState.CANCELLED, "cancelled by user")
            job.reason, job.end_time = "", self.clock()
            return job.state

    # -- recovery ------------------------------------------------------------

    def recover(self) -> None:
        """After a (re)start: adopt runs that are still alive; requeue jobs whose runs are gone."""
        with self.lock, self.store.session() as s:
            for job in s.scalars(select(Job).where(Job.state.in_([JobState.RUNNING.value,
                                                                   JobState.RESTARTING.value]))):
                if self.executor.adopt(job.id, job.attempt, job.pid):
                    log.info("job %s: run %s still alive, adopted", job.id, job.attempt)
                    continue
                self._account(job, self.clock())
                self.store.transition(s, job, JobState.PENDING, "service restarted; run lost, resumes from checkpoint")
                job.allocation, job.pid, job.reason = {}, None, "Resources"

    # -- one round -------------------------------------------------------------

    def round(self, extra_env: dict[str, str] | None = None) -> None:
        """Run one scheduling round; `extra_env` is added to the environment of runs it starts."""
        with self.lock:
            self._extra_env = dict(extra_env or {})
            self._round()

    def _round(self) -> None:
        now = self.clock()
        with self.store.session() as s:
            for ended in self.executor.poll():
                job = s.get(Job, ended.job_id)
                if job is not None and JobState(job.state).holds_devices:
                    self._on_exit(s, job, ended, now)
            active = list(s.scalars(select(Job).where(Job.state.in_([JobState.PENDING.value,
                                                                      JobState.RUNNING.value,
                                                                      JobState.RESTARTING.value]))))
            for job in active:
                if JobState(job.state).holds_devices:
                    self._account(job, now)
                    self._check_timeout(job)
            cluster = self.executor.cluster()
            busy = [j for j in active if j.reason in STOPPING]
            schedulable = [j for j in active if j not in busy]
            # A job being preempted or resized will wait again: the policy sees it
            # waiting, so it does not hand the devices it frees to elastic growth
            # while someone is about to queue for them. Its own allocation this
            # round is ignored (it still holds its devices until it exits).
            returning = [j for j in busy if j.reason in (PREEMPTING, RESIZING)]
            views = [self._view(j) for j in schedulable] + [self._view(j, waiting=True) for j in returning]
            decision = self.policy.schedule(now, views, cluster)
            self._apply(s, schedulable, busy, decision.allocations, decision.reasons, cluster, now)
        self._last_round = now

    def _check_timeout(self, job: Job) -> None:
        limit = (job.spec or {}).get("timeout")
        if limit and job.run_time >= float(limit) and job.reason not in STOPPING:
            job.reason = TIMING_OUT
            self.executor.stop(job.id, self.grace)

    def _account(self, job: Job, now: float) -> None:
        """Add the time since the last round to the job's run time and attained service."""
        if job.run_start is None:
            return
        since = max(job.run_start, self._last_round or job.run_start)
        dt = max(0.0, now - since)
        job.run_time += dt
        job.attained_service += dt * _alloc(job).num_devices

    def _view(self, job: Job, *, waiting: bool = False) -> JobView:
        spec = job.spec or {}
        holds = JobState(job.state).holds_devices and not waiting
        return JobView(
            id=str(job.id), user=job.user, priority=job.priority, submit_time=job.submit_time,
            min_gpus=job.min_gpus, max_gpus=job.max_gpus, gpus=job.gpus,
            attained_service=job.attained_service, progress=job.progress,
            duration_estimate=spec.get("duration_estimate"),
            allocation=_alloc(job) if holds else Allocation(),
            run_time=job.run_time, restarts=job.restarts + job.preemptions,
            preemptible=bool(spec.get("preemptible", True)),
        )

    def _apply(self, s: Session, jobs: list[Job], busy: list[Job], allocations: dict, reasons: dict,
               cluster: ClusterView, now: float) -> None:
        # 1. Running jobs whose allocation changed: stop them (checkpoint), start again later.
        for job in jobs:
            if not JobState(job.state).holds_devices:
                continue
            target = allocations.get(str(job.id), Allocation())
            if set(target.devices()) != set(_alloc(job).devices()):
                # Kept with another size: an elastic resize; dropped: a preemption.
                job.reason = RESIZING if target else PREEMPTING
                busy.append(job)
                self.executor.stop(job.id, self.grace)
        # 2. Pending jobs given devices start when those devices are free now.
        held = [_alloc(j) for j in jobs + busy if JobState(j.state).holds_devices]
        free = {(n, d) for n, devs in cluster.free_devices(held).items() for d in devs}
        for job in jobs:
            if JobState(job.state) != JobState.PENDING:
                continue
            target = allocations.get(str(job.id), Allocation())
            if target and set(target.devices()) <= free:
                free -= set(target.devices())
                self._start(s, job, target, now, cause=f"scheduled by {self.policy.name}")
            else:
                job.reason = "Resources" if target else reasons.get(str(job.id), "Resources")

    def _start(self, s: Session, job: Job, alloc: Allocation, now: float, *, cause: str) -> None:
        spec = JobSpec.model_validate(job.spec)
        token = secrets.token_urlsafe(18)
        env = {**self._extra_env, **spec.env, "CORRAL_JOB_TOKEN": token}
        job.job_token_hash = hash_token(token)
        job.attempt += 1
        try:
            job.pid = self.executor.start(job.id, job.attempt, spec.argv(), alloc, env=env, workdir=spec.workdir)
        except Exception as exc:  # one job's failure fails that job, never the scheduler
            log.exception("job %s: start failed", job.id)
            self.store.transition(s, job, JobState.FAILED, f"could not start: {exc}")
            job.end_time, job.reason = now, ""
            return
        devices = ",".join(f"{n}:{d}" for n, d in alloc.devices())
        self.store.transition(s, job, JobState.RUNNING, f"{cause} on {devices}")
        job.allocation, job.reason, job.run_start = alloc.as_dict(), "", now
        job.start_time = job.start_time or now

    def _on_exit(self, s: Session, job: Job, ended: RunExit, now: float) -> None:
        self._account(job, now)
        job.exit_code, job.pid = ended.exit_code, None
        code = ended.exit_code
        if job.reason == CANCELLING:
            self._finish(s, job, JobState.CANCELLED, f"cancelled by user (exit code {code})", now)
        elif code == 0:
            self._finish(s, job, JobState.SUCCEEDED, "exit code 0", now)
        elif job.reason == TIMING_OUT:
            self._finish(s, job, JobState.FAILED, f"timed out after {job.run_time:.0f} s of running (exit code {code})",
                         now)
        elif job.reason == RESIZING:
            job.resizes += 1
            old = _alloc(job).num_devices
            self.store.transition(s, job, JobState.PREEMPTED, f"resize from {old} devices by {self.policy.name}",
                                  now=now)
            self.store.transition(s, job, JobState.PENDING, "requeued at a new size; resumes from its checkpoint",
                                  now=now)
            job.allocation, job.reason, job.run_start = {}, "Resources", None
        elif code == PREEMPTED_EXIT_CODE or job.reason == PREEMPTING:
            job.preemptions += 1
            self.store.transition(s, job, JobState.PREEMPTED, f"preempted by {self.policy.name} (exit code {code})",
                                  now=now)
            self.store.transition(s, job, JobState.PENDING, "requeued; resumes from its checkpoint", now=now)
            job.allocation, job.reason, job.run_start = {}, "Resources", None
        elif job.restarts < int((job.spec or {}).get("max_restarts", 0)):
            job.restarts += 1
            self.store.transition(s, job, JobState.RESTARTING,
                                  f"exit code {code}; restart {job.restarts}/{job.spec.get('max_restarts')}", now=now)
            alloc = _alloc(job)
            job.run_start = None
            self._start(s, job, alloc, now, cause="restarted")
        else:
            tail = _last_lines(self._launcher_log(job.id))
            job.last_log = tail
            self._finish(s, job, JobState.FAILED, f"exit code {code}" + (f": {tail.splitlines()[-1]}" if tail else ""),
                         now)

    def _finish(self, s: Session, job: Job, state: JobState, cause: str, now: float) -> None:
        self.store.transition(s, job, state, cause, now=now)
        job.end_time, job.reason, job.run_start = now, "", None

    def _launcher_log(self, job_id: int) -> Path:
        ex = self.executor
        return ex.job_dir(job_id) / "launcher.log" if isinstance(ex, LocalExecutor) else Path("/nonexistent")
