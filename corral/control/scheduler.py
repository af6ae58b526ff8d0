"""The live scheduler loop: the same round as the simulator, acting through an executor.

A round: record the runs that ended -> count run time -> build the views
(JobView, ClusterView) -> policy.schedule -> validate -> plan -> act.
`validate` and `plan` are corral.sched.plan's, the simulator's own.

Nothing the executor does is hidden inside a database transaction that could
roll back. Each action is written as an *intent* first (Job.intent, committed),
then the executor acts, then the result is committed: a service that dies
anywhere in between finds the intent on restart and `recover()` reconciles it
with what the executor reports. An outcome the executor reports stays
reported until the loop has committed what it means, so none is lost.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from corral.control import accounts
from corral.control.arrays import Dependency, dependency_status
from corral.control.executors.base import Ending, Executor, RunHandle, RunOutcome
from corral.control.spec import JobSpec
from corral.control.states import JobState
from corral.control.store import Job, Store, hash_token
from corral.control.views import job_view
from corral.sched.plan import InvalidDecision, Migrate, Preempt, Resize, Start, plan, validate
from corral.sched.policies._usage import ShareTree
from corral.sched.quotas import WithQuotas
from corral.sched.types import Allocation, ClusterView, Decision, JobView, Policy

log = logging.getLogger("corral.scheduler")

# Job.intent: what the scheduler asked the executor for and has not seen done.
START, PREEMPT, RESIZE, CANCEL, TIMEOUT = "start", "preempt", "resize", "cancel", "timeout"
STOPPING = (PREEMPT, RESIZE, CANCEL, TIMEOUT)
RETURNING = (PREEMPT, RESIZE)  # stopped runs that wait again
ENDING = (CANCEL, TIMEOUT)  # stopped runs that never come back
REASONS = {PREEMPT: "Preempting", RESIZE: "Resizing", CANCEL: "Cancelling", TIMEOUT: "TimingOut"}
ACTIVE = (JobState.PENDING.value, JobState.RUNNING.value, JobState.RESTARTING.value)


def _alloc(job: Job) -> Allocation:
    return Allocation.of(job.allocation or {})


def _handle(job: Job) -> RunHandle:
    return RunHandle(job.id, job.attempt, job.run_ref or "")


class Scheduler:
    """Owns the decisions of the live service: who runs where, when to preempt, restart or give up."""

    def __init__(
        self,
        store: Store,
        executor: Executor,
        policy: Policy,
        *,
        grace: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.executor = executor
        self.policy = policy
        self.grace = grace
        self.clock = clock
        self._extra_env: dict[str, str] = {}
        self._blocked: set[int] = set()  # waiting jobs held back by their dependencies this round
        self.skipped_rounds = 0  # rounds whose decision failed validation
        # The API thread (cancel) and the loop thread (round) both act on the
        # executor; one lock keeps each action whole.
        self.lock = threading.RLock()

    @contextmanager
    def _tx(self) -> Iterator[Session]:
        with self.store.session() as s:
            yield s

    # -- actions requested from outside (API) ----------------------------------

    def cancel(self, job_id: int) -> str:
        """Cancel a job: at once when no run of it is alive, by stopping its run otherwise. Returns its state."""
        with self.lock:
            now = self.clock()
            with self._tx() as s:
                job = s.get(Job, job_id)
                if job is None or JobState(job.state).is_terminal:
                    return job.state if job else ""
                handle, state = self._cancel_one(s, job, now), job.state
            if handle is not None:
                self.executor.stop(handle, self.grace)
            return state

    def cancel_many(self, job_ids: list[int]) -> list[int]:
        """Cancel jobs in one transaction: waiting ones at once, running ones by stopping their runs.

        Returns the ids that were still active. One lock and one commit for all (cancelling 1,000
        queued jobs one request at a time took 9.4 s).
        """
        stops: list[RunHandle] = []
        done: list[int] = []
        with self.lock:
            now = self.clock()
            with self._tx() as s:
                for chunk in range(0, len(job_ids), 500):
                    ids = job_ids[chunk : chunk + 500]
                    for job in s.scalars(select(Job).where(Job.id.in_(ids), Job.state.in_(ACTIVE))):
                        done.append(job.id)
                        handle = self._cancel_one(s, job, now)
                        if handle is not None:
                            stops.append(handle)
            for handle in stops:
                self.executor.stop(handle, self.grace)
        return sorted(done)

    def _cancel_one(self, s: Session, job: Job, now: float) -> RunHandle | None:
        """Cancel an active job in `s`: at once when no run of it is alive, else its run to stop (after commit)."""
        if job.state != JobState.RUNNING.value:  # PENDING, or RESTARTING between two runs
            self._finish(s, job, JobState.CANCELLED, "cancelled by user", now)
            return None
        self._intend(job, CANCEL, now)
        return _handle(job)

    # -- recovery ------------------------------------------------------------

    def recover(self) -> None:
        """After a (re)start: adopt live runs (keeping their stop deadlines), settle what was in flight."""
        with self.lock:
            now = self.clock()
            with self._tx() as s:
                jobs = list(s.scalars(select(Job).where(Job.state.in_(ACTIVE))))
            for job in jobs:
                try:
                    self._recover_one(job.id, now)
                except Exception:  # one job's trouble never stops the service
                    log.exception("job %s: recovery failed", job.id)

    def _recover_one(self, job_id: int, now: float) -> None:
        stop: tuple[RunHandle, float] | None = None
        with self._tx() as s:
            job = s.get(Job, job_id)
            if job is None:
                return
            if job.intent == START and job.state != JobState.RUNNING.value:
                self._settle_start(s, job, now)
                return
            if job.state != JobState.RUNNING.value:
                return
            handle = _handle(job)
            if self.executor.adopt(handle):
                log.info("job %s: run %s still alive, adopted", job.id, job.attempt)
                if job.intent in STOPPING:
                    # Keep the stop's deadline: a run that ignores SIGTERM is still killed.
                    left = max(0.0, (job.intent_time or now) + self.grace - now)
                    stop = (handle, left)
            else:
                self._ended(s, job, RunOutcome(handle, Ending.LOST, None, "run gone while the service was down"), now)
        if stop is not None:
            self.executor.stop(*stop)

    def _settle_start(self, s: Session, job: Job, now: float) -> None:
        """A start whose result was never recorded (service died, or a commit failed): did the run begin?"""
        found = self.executor.find(job.id, job.attempt)
        if found is not None:
            self._started(s, job, found, _alloc(job), job.intent_time or now, "adopted after an interrupted start")
            log.info("job %s: run %s found after an interrupted start, adopted", job.id, job.attempt)
        else:
            job.intent, job.intent_time = "", None
            if job.state == JobState.PENDING.value:
                job.allocation = {}

    # -- one round -------------------------------------------------------------

    def round(self, extra_env: dict[str, str] | None = None) -> None:
        """Run one scheduling round; `extra_env` is added to the environment of runs it starts."""
        with self.lock:
            self._extra_env = dict(extra_env or {})
            self._round()

    def _round(self) -> None:
        now = self.clock()
        with self._tx() as s:
            for job in s.scalars(select(Job).where(Job.intent == START, Job.state.in_(ACTIVE))):
                if job.state != JobState.RUNNING.value:
                    self._settle_start(s, job, now)
        self._collect(now)
        stops: list[tuple[RunHandle, float]] = []
        with self._tx() as s:
            active = list(s.scalars(select(Job).where(Job.state.in_(ACTIVE)).order_by(Job.id)))
            for job in active:
                if job.state == JobState.RUNNING.value:
                    self._account(job, now)
                    limit = (job.spec or {}).get("timeout")
                    if limit and job.run_time >= float(limit) and job.intent not in ENDING:
                        self._intend(job, TIMEOUT, now)
                        stops.append((_handle(job), self.grace))
        for handle, grace in stops:
            self.executor.stop(handle, grace)
        cluster = self.executor.cluster()
        self._blocked, cancelled = self._dependencies(active, now)
        views, current, busy = self._views([j for j in active if j.id not in self._blocked | cancelled])
        try:
            decision = self._policy().schedule(now, views, cluster)
            validate(decision, views, cluster)
        except InvalidDecision as exc:
            self.skipped_rounds += 1
            log.error("policy %r: invalid decision, round skipped: %s", self.policy.name, exc)
            return
        except Exception:  # a policy's bug costs one round, never the service
            self.skipped_rounds += 1
            log.exception("policy %r: schedule() raised, round skipped", self.policy.name)
            return
        self._act(decision, current, busy, active, cluster, now)

    def _policy(self) -> Policy:
        """The policy for this round: the users' and groups' shares from the store, their quotas around it."""
        snap = accounts.snapshot(self.store)
        if isinstance(getattr(self.policy, "tree", None), ShareTree):  # fairshare, or priority with fairshare=W
            self.policy.tree = ShareTree.of(  # type: ignore[attr-defined]
                self.policy.name, snap.shares, snap.groups, snap.group_shares
            )
        return WithQuotas(self.policy, snap.quotas)

    def _dependencies(self, active: list[Job], now: float) -> tuple[set[int], set[int]]:
        """(ids of waiting jobs whose dependencies have not ended yet, ids of those cancelled now because
        their dependencies can never be satisfied): neither is shown to the policy this round."""
        blocked: set[int] = set()
        cancelled: set[int] = set()
        candidates = [
            j.id
            for j in active
            if j.state == JobState.PENDING.value and j.attempt == 0 and (j.spec or {}).get("depends_on")
        ]
        if not candidates:  # the common round: no extra query
            return blocked, cancelled
        with self._tx() as s:
            waiting = list(s.scalars(select(Job).where(Job.id.in_(candidates), Job.state == JobState.PENDING.value)))
            ids = {int(d) for j in waiting for d in j.spec["depends_on"]}
            states = {i: st for i, st in s.execute(select(Job.id, Job.state).where(Job.id.in_(ids)))}
            for job in waiting:
                deps = [int(d) for d in job.spec["depends_on"]]
                after = str(job.spec.get("after", "ok"))
                status = dependency_status(after, [states.get(d) for d in deps])
                if status == Dependency.NEVER:
                    bad = [f"{d} {states.get(d, 'unknown')}" for d in deps if states.get(d) != "SUCCEEDED"]
                    self._finish(
                        s, job, JobState.CANCELLED, f"dependency never satisfied (after {after}): {', '.join(bad)}", now
                    )
                    job.reason = "DependencyNeverSatisfied"
                    cancelled.add(job.id)
                elif status == Dependency.WAITING:
                    blocked.add(job.id)
                    job.reason = "Dependency"
        return blocked, cancelled

    def _collect(self, now: float) -> None:
        """Record every run that ended; the executor forgets one only after its end is committed."""
        for outcome in self.executor.poll():
            try:
                with self._tx() as s:
                    job = s.get(Job, outcome.job_id)
                    if (
                        job is not None
                        and job.state == JobState.RUNNING.value
                        and job.attempt == outcome.handle.attempt
                    ):
                        self._ended(s, job, outcome, now)
            except Exception:  # the outcome stays reported: the next round tries again
                log.exception("job %s: recording the end of run %s failed", outcome.job_id, outcome.handle.attempt)
                continue
            self.executor.release(outcome.handle)

    def _views(self, active: list[Job]) -> tuple[list[JobView], dict[str, Allocation], set[str]]:
        """(the policy's views, what each job the policy may move holds, ids of jobs being stopped)."""
        views: list[JobView] = []
        current: dict[str, Allocation] = {}
        busy: set[str] = set()
        for job in active:
            jid = str(job.id)
            if job.intent in RETURNING:
                # It will wait again: the policy sees it waiting, so the devices it
                # frees are not handed to elastic growth while it queues for them.
                busy.add(jid)
                views.append(job_view(job, waiting=True))
            elif job.intent in ENDING:
                # Its devices are not free until it is gone: pinned where it is.
                busy.add(jid)
                views.append(job_view(job, pinned=True))
            else:
                view = job_view(job)
                views.append(view)
                if view.allocation:
                    current[jid] = view.allocation
        return views, current, busy

    def _act(
        self,
        decision: Decision,
        current: dict[str, Allocation],
        busy: set[str],
        active: list[Job],
        cluster: ClusterView,
        now: float,
    ) -> None:
        by_id = {str(j.id): j for j in active}
        actions = [a for a in plan(decision, current) if a.job_id not in busy]
        stops: list[tuple[RunHandle, float]] = []
        starting: list[tuple[int, Allocation]] = []
        with self._tx() as s:
            for action in actions:
                job = s.get(Job, int(action.job_id))
                if job is None:
                    continue
                if isinstance(action, (Preempt, Resize, Migrate)):
                    if job.state == JobState.RESTARTING.value:  # no run to stop: it simply waits
                        self.store.transition(
                            s, job, JobState.PENDING, f"devices taken by {self.policy.name} before its restart", now=now
                        )
                        self._clear_run(job)
                        continue
                    self._intend(job, PREEMPT if isinstance(action, Preempt) else RESIZE, now)
                    stops.append((_handle(job), self.grace))
                    if not isinstance(action, Preempt):
                        # Restarted at its new size in this round when its run stops at once.
                        starting.append((job.id, action.new))
                elif isinstance(action, Start):
                    starting.append((job.id, action.new))
            # RESTARTING jobs that keep their devices start again on them.
            for jid, alloc in current.items():
                job = by_id[jid]
                if job.state == JobState.RESTARTING.value and decision.allocation(jid) == alloc:
                    starting.append((job.id, alloc))
        for handle, grace in stops:
            self.executor.stop(handle, grace)
        if stops:
            # Runs that stopped at once (a fake run; a real one that had just ended) free
            # their devices for this round's starts, as the simulator frees them.
            self._collect(now)
        # Starts go on devices no live run holds (a stopped run holds its devices until it exits).
        with self._tx() as s:
            held = [_alloc(j) for j in s.scalars(select(Job).where(Job.state == JobState.RUNNING.value))]
        free = {(n, d) for n, devs in cluster.free_devices(held).items() for d in devs}
        started: set[str] = set()
        for job_id, alloc in starting:
            want = set(alloc.devices())
            if want <= free:
                free -= want
                if self._start(job_id, alloc, now):
                    started.add(str(job_id))
        with self._tx() as s:
            for job in s.scalars(select(Job).where(Job.state == JobState.PENDING.value)):
                jid = str(job.id)
                if jid in started:
                    continue
                if job.id in self._blocked:
                    continue  # its reason says which dependency it waits for
                reason = "Resources" if decision.allocation(jid) else decision.reasons.get(jid, "Resources")
                if job.reason != reason:
                    job.reason = reason

    # -- starting a run --------------------------------------------------------------

    def _start(self, job_id: int, alloc: Allocation, now: float) -> bool:
        """Start a run: intent committed, executor started, RUNNING committed. False when it failed."""
        token = secrets.token_urlsafe(18)
        with self._tx() as s:
            job = s.get(Job, job_id)
            if job is None or job.state not in (JobState.PENDING.value, JobState.RESTARTING.value):
                return False
            spec = JobSpec.model_validate(job.spec)
            restart = job.state == JobState.RESTARTING.value
            job.attempt += 1
            job.allocation = alloc.as_dict()
            job.job_token_hash = hash_token(token)
            self._intend(job, START, now)
            attempt, argv, workdir = job.attempt, spec.argv(), spec.workdir
            env = {**self._extra_env, **spec.env, "CORRAL_JOB_TOKEN": token}
        try:
            handle = self.executor.start(job_id, attempt, argv, alloc, env=env, workdir=workdir)
        except Exception as exc:  # one job's failure fails that job, never the scheduler
            log.exception("job %s: start failed", job_id)
            with self._tx() as s:
                job = s.get(Job, job_id)
                if job is not None:
                    self._finish(s, job, JobState.FAILED, f"could not start: {exc}", now)
            return False
        with self._tx() as s:
            job = s.get(Job, job_id)
            if job is not None:
                self._started(
                    s, job, handle, alloc, now, "restarted" if restart else f"scheduled by {self.policy.name}"
                )
        return True

    def _started(self, s: Session, job: Job, handle: RunHandle, alloc: Allocation, at: float, cause: str) -> None:
        devices = ",".join(f"{n}:{d}" for n, d in alloc.devices())
        self.store.transition(
            s,
            job,
            JobState.RUNNING,
            f"{cause} on {devices}",
            now=at,
            data={"allocation": alloc.as_dict(), "attempt": handle.attempt},
        )
        job.allocation, job.run_ref, job.reason = alloc.as_dict(), handle.ref, ""
        job.intent, job.intent_time = "", None
        job.run_start, job.accounted_until = at, at
        job.start_time = job.start_time or at

    # -- the end of a run -------------------------------------------------------------

    def _ended(self, s: Session, job: Job, outcome: RunOutcome, now: float) -> None:
        """Record how a run ended, given what the scheduler had asked of it."""
        self._account(job, now)
        job.exit_code, job.run_ref = outcome.exit_code, ""
        code = outcome.exit_code
        intent = job.intent
        ending = outcome.ending
        if ending == Ending.SUCCEEDED:  # done is done, whatever was asked meanwhile
            self._finish(s, job, JobState.SUCCEEDED, "exit code 0", now)
        elif intent == CANCEL:
            self._finish(s, job, JobState.CANCELLED, f"cancelled by user ({_how(outcome)})", now)
        elif intent == TIMEOUT:
            self._finish(
                s, job, JobState.FAILED, f"timed out after {job.run_time:.0f} s of running ({_how(outcome)})", now
            )
        elif ending == Ending.UNPLACED:
            # It never ran: back in the queue with the reason, no restart or loss counted.
            self.store.transition(
                s, job, JobState.PENDING, f"not placed: {outcome.detail}", now=now, data={"kind": "unplaced"}
            )
            self._clear_run(job)
            job.reason = "PlacementTimeout"
        elif ending == Ending.LOST:
            # Not the job's fault (its node or the service went away): it resumes, no restart used.
            self.store.transition(
                s,
                job,
                JobState.PENDING,
                f"run lost ({outcome.detail or 'no exit code'}); resumes from its checkpoint",
                now=now,
                data={"kind": "lost"},
            )
            self._clear_run(job)
        elif intent in RETURNING and ending in (Ending.PREEMPTED, Ending.KILLED):
            old = _alloc(job).num_devices
            if intent == RESIZE:
                job.resizes += 1
                cause = f"resize from {old} devices by {self.policy.name} ({_how(outcome)})"
            else:
                job.preemptions += 1
                cause = f"preempted by {self.policy.name} ({_how(outcome)})"
            self._requeue(s, job, cause, now, kind="resize" if intent == RESIZE else "preemption")
        else:
            # It failed by itself: a crash (also one while being preempted), or an
            # exit 75 nobody asked for. Restart within max_restarts, else FAILED.
            why = f"exit code {code}" + (" (preempted, but no stop was asked)" if ending == Ending.PREEMPTED else "")
            limit = int((job.spec or {}).get("max_restarts", 0))
            if job.restarts < limit:
                job.restarts += 1
                self.store.transition(s, job, JobState.RESTARTING, f"{why}; restart {job.restarts}/{limit}", now=now)
                job.intent, job.intent_time, job.reason, job.run_start = "", None, "Restarting", None
            else:
                # The log's tail is the owner's to read (job.last_log); events are everyone's.
                job.last_log = self.executor.log_tail(job.id)
                self._finish(s, job, JobState.FAILED, why, now, data={"exit_code": code})

    def _requeue(self, s: Session, job: Job, cause: str, now: float, *, kind: str) -> None:
        self.store.transition(s, job, JobState.PREEMPTED, cause, now=now, data={"kind": kind})
        self.store.transition(s, job, JobState.PENDING, "requeued; resumes from its checkpoint", now=now)
        self._clear_run(job)

    def _clear_run(self, job: Job) -> None:
        job.allocation, job.run_ref, job.reason, job.run_start = {}, "", "Resources", None
        job.intent, job.intent_time, job.accounted_until = "", None, None

    def _finish(
        self, s: Session, job: Job, state: JobState, cause: str, now: float, data: dict[str, Any] | None = None
    ) -> None:
        self.store.transition(s, job, state, cause, now=now, data=data)
        job.end_time, job.reason, job.run_start, job.run_ref = now, "", None, ""
        job.intent, job.intent_time, job.accounted_until = "", None, None

    # -- bookkeeping ------------------------------------------------------------------

    def _intend(self, job: Job, intent: str, now: float) -> None:
        """Record what is about to be asked of the executor (committed before it acts)."""
        if intent in STOPPING and job.intent in ENDING and intent not in ENDING:
            return  # a cancel or timeout under way is not downgraded to a preemption
        if intent == START or job.intent not in STOPPING:
            job.intent_time = now  # a stop already sent keeps its time: its kill deadline counts from it
        job.intent = intent
        if intent in REASONS:
            job.reason = REASONS[intent]

    def _account(self, job: Job, now: float) -> None:
        """Count run time and attained service up to `now`, from where counting stopped (never twice)."""
        if job.run_start is None:
            return
        since = max(job.run_start, job.accounted_until or job.run_start)
        dt = max(0.0, now - since)
        job.run_time += dt
        job.attained_service += dt * _alloc(job).num_devices
        job.accounted_until = max(since, now)

    def views(self) -> list[JobView]:
        """The views the policy would be given now (for tests and `corral describe`)."""
        with self._tx() as s:
            active = list(s.scalars(select(Job).where(Job.state.in_(ACTIVE)).order_by(Job.id)))
        return self._views(active)[0]


def _how(outcome: RunOutcome) -> str:
    if outcome.ending == Ending.KILLED:
        return f"{outcome.detail or 'killed after the grace period'}, exit code {outcome.exit_code}"
    if outcome.exit_code is None:
        return outcome.detail or "no exit code"
    return f"exit code {outcome.exit_code}"


__all__: list[Any] = ["Scheduler"]
