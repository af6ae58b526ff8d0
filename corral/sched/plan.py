"""A round's decision -> actions step, shared by the simulator and the live scheduler.

`validate(decision, jobs, cluster)` checks a policy's Decision against the
scheduling contract and raises InvalidDecision naming the first violation;
`plan(decision, current)` turns a valid Decision into typed actions against
what every job holds now. Both are pure: the simulator applies the actions
instantly, the service through its executor.

>>> from corral.sched.types import Allocation, ClusterView, Decision, JobView
>>> a = Allocation.of({"n0": [0, 1]})
>>> plan(Decision({"j1": a}), {"j0": Allocation.of({"n0": [2]})})
[Preempt(job_id='j0', old=Allocation(slots=(('n0', (2,)),))), Start(job_id='j1', new=Allocation(slots=(('n0', (0, 1)),)))]
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from corral.sched.types import EMPTY, Allocation, ClusterView, Decision, JobView


class InvalidDecision(RuntimeError):
    """A policy returned a Decision that breaks the scheduling contract (a bug in the policy)."""


@dataclass(frozen=True)
class Start:
    """A job that holds nothing starts (or resumes from its checkpoint) on `new`."""

    job_id: str
    new: Allocation


@dataclass(frozen=True)
class Preempt:
    """A running job loses every device: it checkpoints and waits again."""

    job_id: str
    old: Allocation


@dataclass(frozen=True)
class Resize:
    """A running (elastic) job restarts from its checkpoint with another device count."""

    job_id: str
    old: Allocation
    new: Allocation


@dataclass(frozen=True)
class Migrate:
    """A running job restarts from its checkpoint on as many, but other, devices."""

    job_id: str
    old: Allocation
    new: Allocation


@dataclass(frozen=True)
class Keep:
    """A running job keeps exactly the devices it holds."""

    job_id: str
    allocation: Allocation


Action = Start | Preempt | Resize | Migrate | Keep


def check_allocation(job: JobView, alloc: Allocation, sizes: Mapping[str, int]) -> str | None:
    """Why `alloc` is not a valid allocation of `job` on nodes of `sizes` (None when it is)."""
    if not isinstance(alloc, Allocation):
        return f"job {job.id!r}: expected an Allocation, got {type(alloc).__name__}"
    k = alloc.num_devices
    lo = max(job.min_gpus, 1)
    if k < lo:
        return f"job {job.id!r} got {k} devices, a partial gang: it needs at least {lo} (range [{lo}, {job.max_gpus}])"
    if k > job.max_gpus:
        return f"job {job.id!r} got {k} devices, outside [{lo}, {job.max_gpus}]"
    for node, devs in alloc.slots:
        size = sizes.get(node)
        if size is None:
            return f"job {job.id!r}: unknown node {node!r}"
        for d in devs:
            if not 0 <= d < size:
                return f"job {job.id!r}: node {node!r} has no device {d}"
    return None


def validate(decision: Decision, jobs: Sequence[JobView] | Mapping[str, JobView], cluster: ClusterView) -> None:
    """Raise InvalidDecision unless `decision` keeps the scheduling contract for `jobs` on `cluster`.

    Checked: a Decision; only known jobs; a non-empty Allocation each, within
    [min_gpus, max_gpus] (no partial gang); devices that exist; no device twice.
    """
    if not isinstance(decision, Decision):
        raise InvalidDecision(f"schedule() returned {type(decision).__name__}, expected Decision")
    by_id = jobs if isinstance(jobs, Mapping) else {j.id: j for j in jobs}
    sizes = {n.name: n.num_devices for n in cluster.nodes}
    seen: set[tuple[str, int]] = set()
    for job_id, alloc in decision.allocations.items():
        job = by_id.get(job_id)
        if job is None:
            raise InvalidDecision(f"allocation for unknown or inactive job {job_id!r}")
        if isinstance(alloc, Allocation) and not alloc:
            raise InvalidDecision(f"job {job_id!r}: empty allocation (leave the job out of the decision instead)")
        why = check_allocation(job, alloc, sizes)
        if why is not None:
            raise InvalidDecision(why)
        for dev in alloc.devices():
            if dev in seen:
                raise InvalidDecision(f"device {dev[1]} of node {dev[0]!r} given twice (job {job_id!r})")
            seen.add(dev)


def plan(decision: Decision, current: Mapping[str, Allocation], order: Iterable[str] | None = None) -> list[Action]:
    """The actions that take every job from `current` (job id -> what it holds) to `decision`.

    Stopping actions come first (Preempt, Resize, Migrate: they free devices),
    then Start, then Keep; within a kind, jobs follow `order` (default:
    `current`'s order, then the decision's). Jobs that hold nothing and get
    nothing have no action.
    """
    ids: dict[str, None] = dict.fromkeys(order) if order is not None else {}
    ids.update(dict.fromkeys(current))
    ids.update(dict.fromkeys(decision.allocations))
    stops: list[Action] = []
    starts: list[Action] = []
    keeps: list[Action] = []
    allocs = decision.allocations
    for job_id in ids:
        old = current.get(job_id, EMPTY)
        new = allocs.get(job_id, EMPTY)
        if not old:
            if new:
                starts.append(Start(job_id, new))
        elif not new:
            stops.append(Preempt(job_id, old))
        elif new is old or new == old:
            keeps.append(Keep(job_id, old))
        elif new.num_devices != old.num_devices:
            stops.append(Resize(job_id, old, new))
        else:
            stops.append(Migrate(job_id, old, new))
    return stops + starts + keeps
