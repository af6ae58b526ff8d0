"""The discrete-event simulation engine: replays a trace against a policy on a simulated cluster.

Events are job arrivals, job completions and scheduling rounds. A round runs
every `round_s` simulated seconds (on a fixed grid from t = 0) and, when
`event_rounds` is on, right after any arrival or completion. A round builds a
JobView for every active job and a ClusterView, calls
`policy.schedule(now, jobs, cluster)`, validates the Decision and applies the
difference: jobs that lose all devices are preempted; jobs that start again
after a preemption, or are resized or migrated, restart and make no progress
for `restart_overhead_s` seconds.

Cost per event is O(1) except rounds, which are O(active jobs): finished jobs
are never looked at again, pending jobs' views are cached while they wait,
and a running job's completion time is computed analytically from its work
model and kept in a heap (entries of superseded allocations are skipped).

Every Decision is checked (known active jobs, devices that exist, no device
twice, counts within [min_gpus, max_gpus]) and a violation raises
InvalidDecision. A job whose min_gpus exceeds the cluster is recorded as
unschedulable at arrival. The run ends when no job is active and none is
left to arrive, or after `stall_rounds` rounds in which no job computed and
none could arrive (a policy that never schedules), or at `max_time`.
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

from corral.sched.types import EMPTY, Allocation, ClusterView, Decision, JobView, Policy
from corral.sim.result import InvalidDecision, JobResult, JobStatus, SimConfig, SimProgress, SimResult
from corral.sim.traces import TraceJob
from corral.sim.work import Packing, WorkModel, build_work

__all__ = ["InvalidDecision", "JobResult", "JobStatus", "SimConfig", "SimProgress", "SimResult", "Simulator",
           "simulate"]

INF = math.inf
_NO_EXTRA: Any = MappingProxyType({})


class _Job:
    """Mutable state of one job inside the engine."""

    __slots__ = (
        "tj", "work", "total", "alloc", "n", "done", "rate", "seg_end", "last", "busy_until",
        "attained", "run_time", "restarts", "preemptions", "first_start", "finish", "version",
        "view", "static", "status", "live",
    )

    def __init__(self, tj: TraceJob, work: WorkModel) -> None:
        self.tj = tj
        self.work = work
        self.total = work.total
        self.alloc: Allocation = EMPTY
        self.n = 0
        self.done = 0.0
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
        self.view: JobView | None = None
        self.static: dict[str, Any] = {
            "id": tj.id, "user": tj.user, "priority": tj.priority, "submit_time": tj.submit_time,
            "min_gpus": tj.min_gpus, "max_gpus": tj.max_gpus, "gpus": tj.gpus,
            "duration_estimate": work.ideal_duration, "throughput": None, "preemptible": True,
            "extra": _NO_EXTRA if tj.application is None else MappingProxyType({"application": tj.application}),
        }
        self.status = JobStatus.UNFINISHED
        self.live = hasattr(work, "throughput_model")
        if self.live:
            self.static["max_gpus"] = work.max_gpus_now()

    def advance(self, t: float) -> None:
        """Integrate progress and service from `self.last` to `t` under the current allocation."""
        last = self.last
        if t <= last:
            return
        if self.n:
            dt = t - last
            self.attained += dt * self.n
            self.run_time += dt
            s = last if self.busy_until <= last else min(self.busy_until, t)
            while s < t and self.done < self.total:
                if self.done >= self.seg_end:
                    self.rate, self.seg_end = self.work.rate(self.alloc, self.done)
                need = (self.seg_end - self.done) / self.rate
                if s + need <= t:
                    self.done = self.seg_end
                    s += need
                else:
                    self.done += self.rate * (t - s)
                    s = t
        self.last = t

    def finish_at(self) -> float:
        """Simulated time at which the job completes if its allocation does not change."""
        t = max(self.last, self.busy_until)
        done, rate, seg_end = self.done, self.rate, self.seg_end
        while True:
            if done >= seg_end:
                rate, seg_end = self.work.rate(self.alloc, done)
            if seg_end >= self.total:
                return t + (self.total - done) / rate
            t += (seg_end - done) / rate
            done = seg_end


def _make_view(job: _Job) -> JobView:
    # JobView is a frozen dataclass; filling its __dict__ directly skips the
    # per-field object.__setattr__ calls of its __init__, which dominate a
    # round with hundreds of running jobs. Same fields, same values.
    v = object.__new__(JobView)
    d = v.__dict__
    d.update(job.static)
    d["attained_service"] = job.attained
    d["progress"] = min(1.0, job.done / job.total) if job.total > 0 else 1.0
    d["allocation"] = job.alloc
    d["run_time"] = job.run_time
    d["restarts"] = job.restarts
    return v


_VIEW_FIELDS = {f.name for f in fields(JobView)}
_SET_FIELDS = {"id", "user", "priority", "submit_time", "min_gpus", "max_gpus", "gpus", "duration_estimate",
               "throughput", "preemptible", "extra", "attained_service", "progress", "allocation", "run_time",
               "restarts"}
if _VIEW_FIELDS != _SET_FIELDS or hasattr(JobView, "__slots__"):  # pragma: no cover - types.py changed

    def _make_view(job: _Job) -> JobView:  # noqa: F811 - the portable path
        return JobView(
            **job.static,
            attained_service=job.attained,
            progress=min(1.0, job.done / job.total) if job.total > 0 else 1.0,
            allocation=job.alloc,
            run_time=job.run_time,
            restarts=job.restarts,
        )


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
        self.node_size = {n.name: n.num_devices for n in cluster.nodes}
        self.occupied: dict[str, set[int]] = {n.name: set() for n in cluster.nodes}
        self.active: dict[str, _Job] = {}  # insertion order = arrival order
        self.running: dict[str, _Job] = {}
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
            job.advance(end)
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
        job.last = t
        self.active[job.tj.id] = job
        return True

    def _complete(self, job: _Job, t: float) -> None:
        self.events += 1
        job.advance(t)
        job.done = job.total
        job.finish = t
        job.status = JobStatus.FINISHED
        job.version += 1
        self._release(job)
        del self.active[job.tj.id]
        del self.running[job.tj.id]
        self.used -= job.n
        job.alloc, job.n, job.view = EMPTY, 0, None
        self.finished += 1

    def _release(self, job: _Job) -> None:
        occ = self.occupied
        for node, devs in job.alloc.slots:
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
        views = []
        for job in self.active.values():
            if job.n:
                job.advance(now)
                if job.live:
                    # Application jobs report their step time; the fitted model and
                    # the exploration limit change as they run.
                    job.static["throughput"] = job.work.throughput_model(job.alloc, job.done)
                    job.static["max_gpus"] = job.work.max_gpus_now()
                views.append(_make_view(job))
            else:
                v = job.view
                if v is None:
                    v = job.view = _make_view(job)
                views.append(v)
        decision = self.policy.schedule(now, views, self.cluster)
        self._apply(decision, now)

    def _fail(self, now: float, what: str) -> InvalidDecision:
        name = getattr(self.policy, "name", type(self.policy).__name__)
        return InvalidDecision(f"policy {name!r} at t={now:g}s: {what}")

    def _apply(self, decision: Decision, now: float) -> None:
        if not isinstance(decision, Decision):
            raise self._fail(now, f"schedule() returned {type(decision).__name__}, expected Decision")
        allocs = decision.allocations
        active = self.active
        changed: list[tuple[_Job, Allocation]] = []
        for jid, alloc in allocs.items():
            job = active.get(jid)
            if job is None:
                raise self._fail(now, f"allocation for unknown or inactive job {jid!r}")
            if alloc is job.alloc:
                continue
            if not isinstance(alloc, Allocation):
                raise self._fail(now, f"job {jid!r}: expected an Allocation, got {type(alloc).__name__}")
            if alloc == job.alloc:
                continue
            if alloc:
                k = alloc.num_devices
                if not job.tj.min_gpus <= k <= job.tj.max_gpus:
                    raise self._fail(
                        now, f"job {jid!r} got {k} devices, outside [{job.tj.min_gpus}, {job.tj.max_gpus}]"
                    )
            changed.append((job, alloc))
        for jid, job in self.running.items():
            if jid not in allocs:
                changed.append((job, EMPTY))
        if not changed:
            return
        # Free what changed jobs held, then claim what they get, so that devices
        # can move between jobs within one decision.
        for job, _ in changed:
            self._release(job)
        occ, sizes = self.occupied, self.node_size
        for job, alloc in changed:
            for node, devs in alloc.slots:
                held = occ.get(node)
                if held is None:
                    raise self._fail(now, f"job {job.tj.id!r}: unknown node {node!r}")
                size = sizes[node]
                for d in devs:
                    if not 0 <= d < size:
                        raise self._fail(now, f"job {job.tj.id!r}: node {node!r} has no device {d}")
                    if d in held:
                        raise self._fail(now, f"device {d} of node {node!r} given twice (job {job.tj.id!r})")
                    held.add(d)
        for job, alloc in changed:
            self._reallocate(job, alloc, now)

    def _reallocate(self, job: _Job, alloc: Allocation, now: float) -> None:
        job.advance(now)
        old = job.alloc
        jid = job.tj.id
        if alloc:
            if old or job.first_start is not None:
                # Resized, migrated, or resumed after a preemption: restart from a checkpoint.
                job.restarts += 1
                job.busy_until = now + self.config.restart_overhead_s
            else:
                job.first_start = now
                job.busy_until = now + (self.config.restart_overhead_s if self.config.start_overhead else 0.0)
            self.running[jid] = job
        else:
            job.preemptions += 1
            del self.running[jid]
        self.used += alloc.num_devices - job.n
        job.alloc, job.n = alloc, alloc.num_devices
        job.view = None
        job.version += 1
        if alloc:
            job.rate, job.seg_end = job.work.rate(alloc, job.done)
            self.seq += 1
            heapq.heappush(self.heap, (job.finish_at(), self.seq, job.version, job))

    def _result(self, job: _Job) -> JobResult:
        tj = job.tj
        return JobResult(
            id=tj.id, user=tj.user, priority=tj.priority, submit_time=tj.submit_time, gpus=tj.gpus,
            min_gpus=tj.min_gpus, max_gpus=tj.max_gpus, ideal_duration=job.work.ideal_duration,
            status=job.status, first_start=job.first_start, finish_time=job.finish,
            attained_service=job.attained, run_time=job.run_time, restarts=job.restarts,
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
