"""What every policy shares: checking running jobs, the allocate-in-order loop, placement.

A policy decides *who runs with how many devices*; `BasePolicy.schedule` then
asks the placer for concrete devices, keeping every job whose count did not
change on the devices it holds.

Why a job waits (Decision.reasons), as in squeue's reason column:

- Unschedulable: it needs more devices (min_gpus) than the cluster has.
- Resources: at its turn in the policy's order, fewer devices were left than it needs.
- Priority: enough devices were left, but the policy held it back for a job
  ahead of it (strict FIFO's head of line, a backfill reservation).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import compress
from operator import attrgetter, is_not
from typing import ClassVar

from corral.errors import UserError
from corral.sched.placement import BasePlacer, FreeDevices, PackPlacer, get_placer
from corral.sched.plan import check_allocation
from corral.sched.types import (
    EMPTY,
    REASON_PRIORITY,
    REASON_RESOURCES,
    REASON_UNSCHEDULABLE,
    Allocation,
    ClusterView,
    Decision,
    JobView,
    Placer,
)

Counts = dict[str, int]  # job id -> devices, in the policy's order
Reasons = dict[str, str]  # job id -> why it waits


def node_sizes(cluster: ClusterView) -> Mapping[str, int]:
    """Node name -> number of devices (the cluster's cached mapping: read it, do not modify it)."""
    return cluster.sizes


def holds_valid(job: JobView, sizes: Mapping[str, int]) -> bool:
    """True when `job` holds an allocation validate() accepts.

    That is: devices that exist, a count within [min_gpus, max_gpus]."""
    alloc = job.allocation
    return bool(alloc) and check_allocation(job, alloc, sizes) is None


def schedulable(job: JobView, total: int) -> bool:
    """True when some valid count of `job` fits a cluster of `total` devices."""
    lo = max(job.min_gpus, 1)
    return lo <= job.max_gpus and lo <= total


def rigid_count(job: JobView, total: int) -> int:
    """Devices a non-elastic policy gives `job`: its request within [min_gpus, max_gpus], at most the cluster."""
    # Plain comparisons: this runs for every job of every round.
    lo = job.min_gpus if job.min_gpus > 1 else 1
    k = job.gpus if job.gpus is not None else job.max_gpus
    if k > job.max_gpus:
        k = job.max_gpus
    if k > total:
        k = total
    return k if k > lo else lo


def split_running(
    jobs: Iterable[JobView], sizes: Mapping[str, int], *, only_pinned: bool
) -> tuple[Counts, list[JobView]]:
    """(counts of the jobs that keep running, the others): all valid running jobs, or only non-preemptible ones."""
    keep: Counts = {}
    rest: list[JobView] = []
    for job in jobs:
        if (not only_pinned or not job.preemptible) and holds_valid(job, sizes):
            keep[job.id] = job.allocation.num_devices
        else:
            rest.append(job)
    return keep, rest


def fill_in_order(
    order: Iterable[JobView],
    capacity: int,
    counts: Counts,
    reasons: Reasons,
    *,
    total: int,
    blocking: bool = False,
    count_of: Callable[[JobView, int], int] = rigid_count,
) -> int:
    """Give each job in `order` its count while it fits `capacity`; returns the devices left.

    With `blocking` (strict FIFO) the first job that does not fit stops every later
    one; otherwise later jobs that fit still start (first fit).
    """
    blocked = False
    for job in order:
        if not schedulable(job, total):
            reasons[job.id] = REASON_UNSCHEDULABLE
            continue
        if capacity <= 0:  # full: nothing fits, whatever the order says
            reasons[job.id] = REASON_RESOURCES
            continue
        k = count_of(job, total)
        if not blocked and k <= capacity:
            counts[job.id] = k
            capacity -= k
            continue
        reasons[job.id] = REASON_PRIORITY if blocked and k <= capacity else REASON_RESOURCES
        blocked = blocked or blocking
    return capacity


def elastic_options(policy: str, elastic: object, min_growth: object) -> tuple[bool, int]:
    """The `elastic` and `min_growth` options of `policy`, checked; UserError names a bad one."""
    if not isinstance(elastic, bool):
        raise UserError(f"{policy} elastic must be true or false, got {elastic!r}")
    if isinstance(min_growth, bool) or not isinstance(min_growth, int) or min_growth < 1:
        raise UserError(f"{policy} min_growth must be an integer >= 1, got {min_growth!r}")
    return elastic, min_growth


def lend_borrowed(jobs: Mapping[str, JobView], counts: Counts, total: int) -> Counts:
    """Count each running, preemptible elastic job in `counts` at its request; returns job id -> devices it holds.

    The devices such a job holds above its request are borrowed: once it is
    counted at its request they are free to any waiting job, before anyone is
    preempted. Non-preemptible jobs keep every device (a resize is a restart).
    """
    held: Counts = dict(counts)
    for job_id, k in counts.items():
        job = jobs[job_id]
        if job.preemptible and job.min_gpus < job.max_gpus:
            request = rigid_count(job, total)
            if k > request:
                counts[job_id] = request
    return held


def give_back(order: Iterable[JobView], counts: Counts, held: Mapping[str, int], free: int) -> int:
    """Return borrowed devices no waiting job took to the jobs that held them, in `order`; returns the devices left."""
    for job in order:
        if free <= 0:
            break
        k = counts.get(job.id)
        if k is None:
            continue
        short = held.get(job.id, 0) - k
        if short > 0:
            back = min(short, free)
            counts[job.id] = k + back  # all of it back: the same count, so it stays in place
            free -= back
    return free


def grow_elastic(
    order: Iterable[JobView],
    counts: Counts,
    held: Mapping[str, int],
    free: int,
    reasons: Mapping[str, str],
    *,
    total: int,
    min_growth: int = 1,
) -> int:
    """Give devices nobody waits for to elastic jobs in `order`, up to max_gpus; returns the devices left.

    Nothing grows while a job waits for Resources: it should get them next
    round rather than see an elastic job grab them (and give them back). A job
    that would otherwise keep running as it is pays a restart to grow, so it
    grows only by at least `min_growth` devices; a job that starts or is
    resized this round anyway takes any spare device.
    """
    if free <= 0 or REASON_RESOURCES in reasons.values():
        return free
    for job in order:
        k = counts.get(job.id)
        if k is None or job.min_gpus >= job.max_gpus:
            continue
        running = job.id in held
        if running and not job.preemptible:
            continue  # it keeps exactly its devices
        extra = min(min(job.max_gpus, total) - k, free)
        if extra <= 0 or (running and k == held[job.id] and extra < min_growth):
            continue
        counts[job.id] = k + extra
        free -= extra
        if free <= 0:
            break
    return free


def running_first(job: JobView) -> int:
    """Sort-key part that puts a running job before a waiting one on ties (no needless preemption)."""
    return 0 if job.allocation else 1


def resolve_placer(placer: Placer | str) -> Placer:
    """A placer instance from a name or an instance."""
    return get_placer(placer) if isinstance(placer, str) else placer


class BasePolicy:
    """A policy as counts-then-placement; subclasses implement `counts`."""

    name: ClassVar[str] = ""

    def __init__(self, placer: Placer | str = "pack") -> None:
        self.placer = resolve_placer(placer)

    def counts(self, now: float, jobs: Sequence[JobView], cluster: ClusterView) -> tuple[Counts, Reasons]:
        """Device counts of the jobs that run next round (in the policy's order) and why the others wait."""
        raise NotImplementedError

    def schedule(self, now: float, jobs: Sequence[JobView], cluster: ClusterView) -> Decision:
        """Decide every active job's allocation for the next round."""
        counts, reasons = self.counts(now, jobs, cluster)
        return place(counts, reasons, jobs, cluster, self.placer)

    def refresh_by(self, now: float, job: JobView) -> float:
        """Until when a caller may pass this view of a running `job` (built at `now`) again instead of a fresh one.

        A fresh view differs in the fields that move while a job runs on the
        same allocation (attained_service, run_time, progress). In any round
        before the returned time this policy decides from the reused view
        exactly what it would decide from a fresh one. The default, `now`,
        means: build it afresh every round. The simulator uses this to skip
        rebuilding views the policy does not look at.
        """
        return now

    def __repr__(self) -> str:
        placer = self.placer.name if isinstance(self.placer, BasePlacer) else repr(self.placer)
        return f"{type(self).__name__}(placer={placer!r})"


def place(
    counts: Mapping[str, int],
    reasons: Reasons,
    jobs: Sequence[JobView],
    cluster: ClusterView,
    placer: Placer,
) -> Decision:
    """Map `counts` to devices (running jobs keep theirs when the count is unchanged) and build the Decision."""
    keep: dict[str, Allocation] = {}
    for job in jobs:
        if job.allocation and job.id in counts:
            keep[job.id] = job.allocation
    # Largest gangs first (first-fit decreasing) so they land on few nodes; the
    # kept jobs are claimed before any of these whatever the order.
    rank = {job_id: i for i, job_id in enumerate(counts)}
    demands = dict(sorted(counts.items(), key=lambda kv: (-kv[1], rank[kv[0]])))
    placed = placer.place(demands, cluster, keep)
    for job in jobs:
        if job.id not in placed and job.id not in reasons:
            reasons[job.id] = REASON_RESOURCES
    for job_id in placed:
        reasons.pop(job_id, None)
    return Decision(allocations=placed, reasons=reasons)


# -- incremental rounds ----------------------------------------------------------

KEEP = 0  # holds a valid allocation the policy keeps as it is (counts toward the demand)
PIN = 1  # holds a valid allocation it keeps whatever happens (not preemptible)
WAIT = 2  # holds nothing: a candidate for a fresh placement
UNSCHED = 3  # holds nothing and can never fit
ODD = 4  # anything else: the incremental path does not handle it


_job_id = attrgetter("id")


class RoundMemo:
    """What an IncrementalPolicy remembers of its last round.

    Invariant between rounds: for every job whose view was in the last round
    and is not in `moved`, `kind[id]` is the class of that view, and a KEEP or
    PIN job's allocation is `allocs[id]`, taken in `free`; no other such job is
    in `allocs`. `allocs` is the last decision's allocations and `free` the
    cluster less all of them; `moved` lists the jobs the last decision changed
    (their next view must differ, or the decision was not applied).
    """

    __slots__ = ("cluster", "views", "allocs", "moved", "free", "kind", "count", "sums", "members", "waiting")

    def __init__(self, cluster: ClusterView) -> None:
        self.cluster = cluster
        self.views: dict[str, JobView] = {}
        self.allocs: dict[str, Allocation] = {}
        self.moved: list[str] = []
        self.free = FreeDevices(cluster)
        self.kind: dict[str, int] = {}
        self.count: dict[str, int] = {}
        self.sums = [0] * 5  # per kind: sum of counts
        self.members = [0] * 5  # per kind: number of jobs
        self.waiting: dict[str, JobView] = {}  # WAIT and UNSCHED jobs

    def add(self, job: JobView, kind: int, count: int) -> None:
        """Record `job`'s class."""
        self.kind[job.id] = kind
        self.count[job.id] = count
        self.sums[kind] += count
        self.members[kind] += 1
        if kind == WAIT or kind == UNSCHED:
            self.waiting[job.id] = job

    def drop(self, job_id: str) -> None:
        """Forget `job_id`'s class (if recorded)."""
        kind = self.kind.pop(job_id, None)
        if kind is not None:
            self.sums[kind] -= self.count.pop(job_id)
            self.members[kind] -= 1
            if kind == WAIT or kind == UNSCHED:
                del self.waiting[job_id]


class IncrementalPolicy(BasePolicy):
    """A BasePolicy whose round reuses the last round's work when few jobs changed.

    Views are compared by identity: a view that is the very object of the last
    round is unchanged (views are immutable). When the changes are few and
    every job falls in a class the subclass handles, `decide` answers from the
    remembered state (the classes of the jobs and the free devices after the
    last decision) in time proportional to the changes and the waiting jobs;
    otherwise the full `counts` + `place` path runs. Both give the same
    Decision: tests/sched/test_incremental.py checks it on random rounds.
    Only the pack placer keeps its state across rounds.
    """

    def __init__(self, placer: Placer | str = "pack") -> None:
        super().__init__(placer)
        # The memo, when there is one, as a one-item list: a round takes it with one
        # atomic pop, so concurrent rounds on one instance never share it.
        self._memo: list[RoundMemo] = []
        self._misses = 0  # incremental rounds that fell back in a row
        self._skip = 0  # rounds left before the next try (remembering costs a full pass)

    def classify(self, job: JobView, total: int, sizes: Mapping[str, int]) -> tuple[int, int]:
        """(class, count) of `job`: KEEP/PIN with the devices held, WAIT with the count it would get, UNSCHED, ODD."""
        raise NotImplementedError

    def decide(self, now: float, memo: RoundMemo, total: int) -> tuple[list[tuple[str, int]], Reasons] | None:
        """(fresh placements in placement order, reasons) given that KEEP and PIN jobs keep their devices.

        None: use the full path."""
        raise NotImplementedError

    def schedule(self, now: float, jobs: Sequence[JobView], cluster: ClusterView) -> Decision:
        """Decide every active job's allocation for the next round (incrementally when that is safe)."""
        try:
            memo: RoundMemo | None = self._memo.pop()
        except IndexError:
            memo = None
        if memo is not None and memo.cluster is cluster:
            decision = self._incremental(now, jobs, cluster, memo)
            if decision is not None:
                self._misses = 0
                self._memo = [memo]
                return decision
            self._misses += 1
        decision = super().schedule(now, jobs, cluster)
        if self._skip > 0:
            self._skip -= 1
        else:
            # After repeated misses (most jobs change every round), remember only now and then.
            self._skip = min(64, (1 << self._misses) - 1) if self._misses > 1 else 0
            fresh = self._remember(jobs, cluster, decision)
            self._memo = [fresh] if fresh is not None else []
        return decision

    def _remember(self, jobs: Sequence[JobView], cluster: ClusterView, decision: Decision) -> RoundMemo | None:
        if type(self.placer) is not PackPlacer:
            return None
        memo = RoundMemo(cluster)
        views = memo.views = {v.id: v for v in jobs}
        if len(views) != len(jobs):
            return None
        free, allocs = memo.free, memo.allocs
        for job_id, alloc in decision.allocations.items():
            if not free.claim(alloc):
                return None
            allocs[job_id] = alloc
        total, sizes = cluster.total_devices, cluster.sizes
        for v in jobs:
            memo.add(v, *self.classify(v, total, sizes))
            new = allocs.get(v.id, EMPTY)
            if new is not v.allocation and new != v.allocation:
                memo.moved.append(v.id)
        return memo

    def _incremental(
        self, now: float, jobs: Sequence[JobView], cluster: ClusterView, memo: RoundMemo
    ) -> Decision | None:
        before = memo.views
        # Whole-list passes run in C (map, zip, compress): a round with a few
        # changes among hundreds of jobs costs microseconds here.
        ids = list(map(_job_id, jobs))
        new = dict(zip(ids, jobs))
        if len(new) != len(jobs):
            return None
        get = before.get
        for job_id in memo.moved:
            if new.get(job_id) is get(job_id):
                return None  # the last decision was not applied to this job
        changed = list(compress(jobs, map(is_not, map(get, ids), jobs)))
        removed = before.keys() - new.keys()
        if len(changed) + len(removed) > max(32, len(jobs) // 4):
            return None
        # From here on the memo is updated: a way out with None drops it.
        free, allocs = memo.free, memo.allocs
        for job_id in removed:
            memo.drop(job_id)
            old = allocs.pop(job_id, None)
            if old is not None:
                free.release(old)
        for v in changed:
            memo.drop(v.id)
            old = allocs.pop(v.id, None)
            if old is not None:
                free.release(old)
        total, sizes = cluster.total_devices, cluster.sizes
        classify = self.classify
        for v in changed:
            kind, count = classify(v, total, sizes)
            memo.add(v, kind, count)
            if kind == KEEP or kind == PIN:
                if not free.claim(v.allocation):
                    return None
                allocs[v.id] = v.allocation
        memo.views = new
        memo.moved = []
        if memo.members[ODD]:
            return None
        answer = self.decide(now, memo, total)
        if answer is None:
            return None
        fresh, reasons = answer
        assert isinstance(self.placer, PackPlacer)
        placed = self.placer.place_fresh(free, fresh)
        for job_id, _ in fresh:
            if job_id in placed:
                reasons.pop(job_id, None)
            else:
                reasons.setdefault(job_id, REASON_RESOURCES)
        allocs.update(placed)
        memo.moved = list(placed)
        return Decision(allocations=dict(allocs), reasons=reasons)
