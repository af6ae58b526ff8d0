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
from typing import ClassVar

from corral.errors import UserError
from corral.sched.placement import BasePlacer, get_placer
from corral.sched.types import (
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


def node_sizes(cluster: ClusterView) -> dict[str, int]:
    """Node name -> number of devices."""
    return {n.name: n.num_devices for n in cluster.nodes}


def holds_valid(job: JobView, sizes: Mapping[str, int]) -> bool:
    """True when `job` holds devices that exist, a count within [min_gpus, max_gpus]."""
    alloc = job.allocation
    if not alloc:
        return False
    count = alloc.num_devices
    if count < max(job.min_gpus, 1) or count > job.max_gpus:
        return False
    for node, devs in alloc.slots:
        size = sizes.get(node)
        if size is None or not devs or min(devs) < 0 or max(devs) >= size:
            return False
    return True


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
        short = held.get(job.id, 0) - k if k is not None else 0
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
