"""The discrete-event simulation engine: replays a trace against a policy on a simulated cluster.

Events are job arrivals, job completions and scheduling rounds. A round runs
every `round_s` simulated seconds (on a fixed grid from t = 0) and, when
`event_rounds` is on, right after any arrival or completion. A round hands
the policy a JobView of every active job and the ClusterView, checks its
Decision with `corral.sched.plan.validate`, turns it into actions with
`plan` (the very steps the live scheduler takes) and applies them: a job
that is preempted, resized or migrated, or resumes after a preemption,
restarts and makes no progress for `restart_overhead_s` seconds.

Cost per event is O(1); a round costs what changed, plus whatever the policy
does with the views:

- a job's service, run time and progress are computed from the last change
  of its allocation (piecewise linear), never integrated round by round, so
  a view may be built at any time and gives the same values;
- views are kept between rounds: a waiting job's never changes, and a
  running job's is rebuilt only when the policy asks for it
  (`policy.refresh_by`, e.g. never for FIFO, when a queue may change for
  Tiresias) or when its fitted throughput model changes;
- the Decision is validated against what every job holds now (only changed
  allocations are checked), and only changed jobs get actions;
- a running job's completion time is computed analytically from its work
  model and kept in a heap (entries of superseded allocations are skipped).

A violation of the scheduling contract raises InvalidDecision. A job whose
min_gpus exceeds the cluster is recorded as unschedulable at arrival. The
run ends when no job is active and none is left to arrive, or after
`stall_rounds` rounds in which no job computed and none could arrive (a
policy that never schedules), or at `max_time`.
"""

from __future__ import annotations

import heapq
import math
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import fields
from types import MappingProxyType
from typing import Any

from corral.sched.plan import InvalidDecision, Migrate, Preempt, Resize, Start, plan, validate
from corral.sched.types import EMPTY, Allocation, ClusterView, JobView, Policy
from corral.sim.result import JobResult, JobStatus, SimConfig, SimProgress, SimResult
from corral.sim.tracejob import TraceJob
from corral.sim.work import Packing, ReportingWork, WorkModel, build_work

__all__ = [
    "InvalidDecision",
    "JobResult",
    "JobStatus",
    "SimConfig",
    "SimProgress",
    "SimResult",
    "Simulator",
    "simulate",
]

INF = math.inf
_NO_EXTRA: Any = MappingProxyType({})


class _Job:
    """Mutable state of one job inside the engine.

    `attained` and `run_time` hold at time `last` (the last change of the
    allocation); `done` holds at `t_done` (moved on only over the ends of the
    work model's segments). Values at a later time follow in closed form, so
    they do not depend on when they are read.
    """

    __slots__ = (
        "tj",
        "work",
        "total",
        "alloc",
        "n",
        "done",
        "t_done",
        "rate",
        "seg_end",
        "last",
        "busy_until",
        "attained",
        "run_time",
        "restarts",
        "preemptions",
        "first_start",
        "finish",
        "version",
        "static",
        "status",
        "live",
        "reporting",
    )

    def __init__(self, tj: TraceJob, work: WorkModel) -> None:
        self.tj = tj
        self.work = work
        self.total = work.total
        self.alloc: Allocation = EMPTY
        self.n = 0
        self.done = 0.0
        self.t_done = tj.submit_time
        self.rate = 0.0
        self.seg_end = 0.0
        self.last = tj.submit_time
        self.busy_until = -INF  # restart overhead ends here
        self.attained = 0.0
        self.run_time = 0.0
        self.restarts = 0
        self.preemptions = 0
        self.first_start: float | None = None
        self.finish: float | None = None
        self.version = 0
        self.static: dict[str, Any] = {
            "id": tj.id,
            "user": tj.user,
            "priority": tj.priority,
            "submit_time": tj.submit_time,
            "min_gpus": tj.min_gpus,
            "max_gpus": tj.max_gpus,
            "gpus": tj.gpus,
            "duration_estimate": work.ideal_duration,
            "throughput": None,
            "preemptible": True,
            "extra": _NO_EXTRA if tj.application is None else MappingProxyType({"application": tj.application}),
        }
        self.status = JobStatus.UNFINISHED
        # A job that reports (ProfileWork): its fitted model and limit change as it runs.
        self.reporting: ReportingWork | None = work if hasattr(work, "throughput_model") else None  # type: ignore[assignment]
        self.live = self.reporting is not None
        if self.reporting is not None:
            self.static["max_gpus"] = self.reporting.max_gpus_now()

    def done_at(self, t: float) -> float:
        """Work done by `t` under the current allocation."""
        if not self.n:
            return self.done
        s = self.t_done if self.busy_until <= self.t_done else self.busy_until
        if t <= s:
            return self.done
        while True:
            if self.done >= self.seg_end:
                self.rate, self.seg_end = self.work.rate(self.alloc, self.done)
            need = (self.seg_end - self.done) / self.rate
            if s + need > t:
                return self.done + self.rate * (t - s)
            if self.seg_end >= self.total:
                return self.total
            # The segment ends before t: move the progress anchor to its end (the
            # same point whenever it is read).
            s += need
            self.done, self.t_done = self.seg_end, s

    def commit(self, t: float) -> None:
        """Bring the state to time `t` (before the allocation changes or the job ends)."""
        if t <= self.last:
            return
        if self.n:
            self.done = self.done_at(t)
            dt = t - self.last
            self.attained += dt * self.n
            self.run_time += dt
        self.t_done = self.last = t

    def finish_at(self) -> float:
        """Simulated time at which the job completes if its allocation does not change."""
        t = max(self.t_done, self.busy_until)
        done, rate, seg_end = self.done, self.rate, self.seg_end
        while True:
            if done >= seg_end:
                rate, seg_end = self.work.rate(self.alloc, done)
            if seg_end >= self.total:
                return t + (self.total - done) / rate
            t += (seg_end - done) / rate
            done = seg_end


def _dynamic(job: _Job, now: float) -> tuple[float, float, float]:
    """(attained service, run time, progress) of `job` at `now`."""
    if job.n and now > job.last:
        dt = now - job.last
        done = job.done_at(now)
        attained, run_time = job.attained + dt * job.n, job.run_time + dt
    else:
        attained, run_time, done = job.attained, job.run_time, job.done
    return attained, run_time, (min(1.0, done / job.total) if job.total > 0 else 1.0)


def _make_view(job: _Job, now: float) -> JobView:
    # JobView is a frozen dataclass; filling its __dict__ directly skips the
    # per-field object.__setattr__ calls of its __init__. Same fields, same values.
    v = object.__new__(JobView)
    d = v.__dict__
    d.update(job.static)
    d["attained_service"], d["run_time"], d["progress"] = _dynamic(job, now)
    d["allocation"] = job.alloc
    d["restarts"] = job.restarts
    return v


_VIEW_FIELDS = {f.name for f in fields(JobView)}
_SET_FIELDS = {
    "id",
    "user",
    "priority",
    "submit_time",
    "min_gpus",
    "max_gpus",
    "gpus",
    "duration_estimate",
    "throughput",
    "preemptible",
    "extra",
    "attained_service",
    "progress",
    "allocation",
    "run_time",
    "restarts",
}
if _VIEW_FIELDS != _SET_FIELDS or hasattr(JobView, "__slots__"):  # pragma: no cover - types.py changed

    def _make_view(job: _Job, now: float) -> JobView:  # noqa: F811 - the portable path
        attained, run_time, progress = _dynamic(job, now)
        return JobView(
            **job.static,
            attained_service=attained,
            run_time=run_time,
            progress=progress,
            allocation=job.alloc,
            restarts=job.restarts,
        )


def _every_round(now: float, view: JobView) -> float:
    return now


class Simulator:
    """One simulation run of `jobs` under `policy` on `cluster`. Use `simulate(...)` unless you need the state."""

    def __init__(
        self,
        jobs: Sequence[TraceJob],
        policy: Policy,
        cluster: ClusterView,
        config: SimConfig | None = None,
        *,
        on_progress: Callable[[SimProgress], None] | None = None,
        progress_every: int = 2000,
    ) -> None:
        self.policy = policy
        self.cluster = cluster
        self.config = config or SimConfig()
        self.on_progress = on_progress
        self.progress_every = max(1, progress_every)
        ids = [j.id for j in jobs]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise ValueError(f"duplicate job id in trace: {dup!r}")
        packing = Packing(cluster)
        penalty = self.config.cross_node_penalty
        order = sorted(range(len(jobs)), key=lambda i: (jobs[i].submit_time, i))
        self.jobs = [_Job(jobs[i], build_work(jobs[i], packing, penalty)) for i in order]
        self.capacity = cluster.total_devices
        self.occupied: dict[str, set[int]] = {n.name: set() for n in cluster.nodes}
        self.active: dict[str, _Job] = {}  # insertion order = arrival order
        self.running: dict[str, _Job] = {}
        self.holding: dict[str, Allocation] = {}  # job id -> what it holds now (running jobs)
        self.views: dict[str, JobView] = {}  # active job id -> its view, in arrival order
        self.dirty: dict[str, _Job] = {}  # jobs whose view is rebuilt at the next round
        self.every: dict[str, _Job] = {}  # running jobs whose view is rebuilt every round
        self.stale: list[tuple[float, int, int, _Job]] = []  # (refresh time, seq, version, job)
        refresh_by = getattr(policy, "refresh_by", None)
        self.refresh_by: Callable[[float, JobView], float] = refresh_by if callable(refresh_by) else _every_round
        self.heap: list[tuple[float, int, int, _Job]] = []
        self.seq = 0
        self.used = 0
        self.now = 0.0
        self.rounds = 0
        self.events = 0
        self.finished = 0
        self.times, self.used_s, self.queued_s, self.active_s = array("d"), array("d"), array("d"), array("d")

    # -- the loop ---------------------------------------------------------------

    def run(self) -> SimResult:
        """Run to the end: every job finished or unschedulable, or the run stalled or hit max_time."""
        cfg = self.config
        wall0 = time.perf_counter()
        jobs, n = self.jobs, len(self.jobs)
        ai = 0
        next_round = 0.0
        stalled = 0
        stopped = "done"
        loops = 0
        while True:
            t_arr = jobs[ai].tj.submit_time if ai < n else INF
            heap = self.heap
            while heap and heap[0][3].version != heap[0][2]:
                heapq.heappop(heap)
            t_done = heap[0][0] if heap else INF
            if not self.active:
                if ai >= n:
                    break
                # Idle: no round until the next arrival.
                next_round = max(next_round, math.ceil(t_arr / cfg.round_s) * cfg.round_s)
            t = min(t_arr, t_done, next_round)
            if cfg.max_time is not None and t > cfg.max_time:
                stopped = "max_time"
                break
            self.now = t
            event = False
            while heap and heap[0][0] <= t:
                _, _, version, job = heapq.heappop(heap)
                if job.version == version:
                    self._complete(job, t)
                    event = True
            while ai < n and jobs[ai].tj.submit_time <= t:
                event |= self._arrive(jobs[ai], t)
                ai += 1
            periodic = t >= next_round
            if periodic:
                next_round = (math.floor(t / cfg.round_s) + 1) * cfg.round_s
            if self.active and (periodic or (event and cfg.event_rounds)):
                self._round(t)
                if any(j.busy_until <= t for j in self.running.values()):
                    stalled = 0  # some job computes: the run moves on
                else:
                    stalled += 1
                    if ai >= n and stalled >= cfg.stall_rounds:
                        stopped = "stalled"
                        self._sample(t)
                        break
            self._sample(t)
            loops += 1
            if self.on_progress is not None and loops % self.progress_every == 0:
                self.on_progress(SimProgress(t, self.finished, n))
        end = self.now
        for job in self.active.values():
            job.commit(end)
        if self.on_progress is not None:
            self.on_progress(SimProgress(end, self.finished, n))
        return SimResult(
            policy=getattr(self.policy, "name", type(self.policy).__name__),
            capacity=self.capacity,
            config=cfg,
            jobs=tuple(self._result(j) for j in jobs),
            times=self.times,
            used=self.used_s,
            queued=self.queued_s,
            active=self.active_s,
            end_time=end,
            rounds=self.rounds,
            events=self.events,
            wall_s=time.perf_counter() - wall0,
            stopped=stopped,
        )

    # -- events -----------------------------------------------------------------

    def _arrive(self, job: _Job, t: float) -> bool:
        self.events += 1
        if job.tj.min_gpus > self.capacity:
            job.status = JobStatus.UNSCHEDULABLE
            return False
        job.last = job.t_done = t
        jid = job.tj.id
        self.active[jid] = job
        self.views[jid] = _make_view(job, t)  # a waiting job's view holds until it starts
        return True

    def _complete(self, job: _Job, t: float) -> None:
        self.events += 1
        job.commit(t)
        job.done = job.total
        job.finish = t
        job.status = JobStatus.FINISHED
        job.version += 1
        self._release(job.alloc)
        jid = job.tj.id
        for table in (self.active, self.running, self.holding, self.views):
            del table[jid]
        self.dirty.pop(jid, None)
        self.every.pop(jid, None)
        self.used -= job.n
        job.alloc, job.n = EMPTY, 0
        self.finished += 1

    def _release(self, alloc: Allocation) -> None:
        occ = self.occupied
        for node, devs in alloc.slots:
            occ[node].difference_update(devs)

    def _sample(self, t: float) -> None:
        used, queued, active = float(self.used), float(len(self.active) - len(self.running)), float(len(self.active))
        times = self.times
        if times and times[-1] == t:
            self.used_s[-1], self.queued_s[-1], self.active_s[-1] = used, queued, active
        elif not times or (self.used_s[-1], self.queued_s[-1], self.active_s[-1]) != (used, queued, active):
            times.append(t)
            self.used_s.append(used)
            self.queued_s.append(queued)
            self.active_s.append(active)

    # -- rounds -----------------------------------------------------------------

    def _round(self, now: float) -> None:
        self.rounds += 1
        self._refresh(now)
        try:
            decision = self.policy.schedule(now, list(self.views.values()), self.cluster)
            changed = validate(decision, self.views, self.cluster, previous=self.holding, held=self.occupied)
        except InvalidDecision as exc:
            raise self._fail(now, str(exc)) from None
        if not changed:
            return
        actions = plan(decision, self.holding, keeps=False, changed=changed)
        # Free what stopping jobs held, then claim what jobs get, so that devices
        # can move between jobs within one decision.
        for action in actions:
            if isinstance(action, (Preempt, Resize, Migrate)):
                self._release(action.old)
        active = self.active
        for action in actions:
            job = active[action.job_id]
            if isinstance(action, Preempt):
                self._reallocate(job, EMPTY, now)
            elif isinstance(action, (Start, Resize, Migrate)):
                self._reallocate(job, action.new, now)

    def _refresh(self, now: float) -> None:
        """Rebuild the views that are out of date: changed jobs, live jobs, and those the policy asks for."""
        views, refresh_by = self.views, self.refresh_by
        due = self.dirty
        self.dirty = {}
        due.update(self.every)
        stale = self.stale
        while stale and stale[0][0] <= now:
            _, _, version, job = heapq.heappop(stale)
            if job.version == version and job.n:
                due[job.tj.id] = job
        for job in due.values():
            jid = job.tj.id
            if job.reporting is not None and job.n:
                # Application jobs report their step time; the fitted model and
                # the exploration limit change as they run.
                job.static["throughput"] = job.reporting.throughput_model(job.alloc, job.done_at(now))
                job.static["max_gpus"] = job.reporting.max_gpus_now()
            view = views[jid] = _make_view(job, now)
            if not job.n:
                self.every.pop(jid, None)
                continue
            until = refresh_by(now, view)
            if job.live or not until > now:
                self.every[jid] = job
            else:
                self.every.pop(jid, None)
                if until < INF:
                    self.seq += 1
                    heapq.heappush(stale, (until, self.seq, job.version, job))

    def _fail(self, now: float, what: str) -> InvalidDecision:
        name = getattr(self.policy, "name", type(self.policy).__name__)
        return InvalidDecision(f"policy {name!r} at t={now:g}s: {what}")

    def _reallocate(self, job: _Job, alloc: Allocation, now: float) -> None:
        job.commit(now)
        jid = job.tj.id
        occ = self.occupied
        for node, devs in alloc.slots:
            occ[node].update(devs)
        if alloc:
            if job.alloc or job.first_start is not None:
                # Resized, migrated, or resumed after a preemption: restart from a checkpoint.
                job.restarts += 1
                job.busy_until = now + self.config.restart_overhead_s
            else:
                job.first_start = now
                job.busy_until = now + (self.config.restart_overhead_s if self.config.start_overhead else 0.0)
            self.running[jid] = job
            self.holding[jid] = alloc
        else:
            job.preemptions += 1
            del self.running[jid]
            del self.holding[jid]
        self.used += alloc.num_devices - job.n
        job.alloc, job.n = alloc, alloc.num_devices
        job.version += 1
        self.every.pop(jid, None)
        if alloc:
            job.rate, job.seg_end = job.work.rate(alloc, job.done)
            self.seq += 1
            heapq.heappush(self.heap, (job.finish_at(), self.seq, job.version, job))
            self.dirty[jid] = job  # its view moves on from now: built at the next round
        else:
            self.views[jid] = _make_view(job, now)  # waiting: holds until it starts again

    def _result(self, job: _Job) -> JobResult:
        tj = job.tj
        return JobResult(
            id=tj.id,
            user=tj.user,
            priority=tj.priority,
            submit_time=tj.submit_time,
            gpus=tj.gpus,
            min_gpus=tj.min_gpus,
            max_gpus=tj.max_gpus,
            ideal_duration=job.work.ideal_duration,
            status=job.status,
            first_start=job.first_start,
            finish_time=job.finish,
            attained_service=job.attained,
            run_time=job.run_time,
            restarts=job.restarts,
            preemptions=job.preemptions,
        )


def simulate(
    jobs: Sequence[TraceJob],
    policy: Policy,
    cluster: ClusterView,
    config: SimConfig | None = None,
    *,
    on_progress: Callable[[SimProgress], None] | None = None,
) -> SimResult:
    """Replay `jobs` against `policy` on `cluster` and return what happened to every job."""
    return Simulator(jobs, policy, cluster, config, on_progress=on_progress).run()
