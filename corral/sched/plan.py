"""A round's decision -> actions step, shared by the simulator and the live scheduler.

`validate(decision, jobs, cluster)` checks a policy's Decision against the
scheduling contract and raises InvalidDecision naming the first violation;
`plan(decision, current)` turns a valid Decision into typed actions against
what every job holds now. Both are pure: the simulator applies the actions
instantly, the service through its executor.

>>> from corral.sched.types import Allocation, ClusterView, Decision, JobView
>>> a = Allocation.of({"n0": [0, 1]})
>>> for action in plan(Decision({"j1": a}), {"j0": Allocation.of({"n0": [2]})}):
...     print(action)
Preempt(job_id='j0', old=Allocation(slots=(('n0', (2,)),)))
Start(job_id='j1', new=Allocation(slots=(('n0', (0, 1)),)))
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import compress
from operator import is_not

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
        return (
            f"job {job.id!r} got {k} devices, outside [{lo}, {job.max_gpus}]: a partial gang (it needs at least {lo})"
        )
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


def validate(
    decision: Decision,
    jobs: Sequence[JobView] | Mapping[str, JobView],
    cluster: ClusterView,
    *,
    previous: Mapping[str, Allocation] | None = None,
    held: Mapping[str, Collection[int]] | None = None,
) -> list[str]:
    """Raise InvalidDecision unless `decision` keeps the scheduling contract for `jobs` on `cluster`.

    Checked: a Decision; only known jobs; a non-empty Allocation each, within
    [min_gpus, max_gpus] (no partial gang); devices that exist; no device twice.
    Returns the ids whose allocation differs from `previous` (those of the
    decision first, then those of `previous` the decision leaves out): what
    `plan(..., changed=...)` needs to look at.

    Incremental use (a loop that validates every round): `previous` is what
    every job holds now, a state that passed this check for these jobs, and
    `held` is node -> device ids held in it. Then an allocation that is the
    very object of `previous` is not checked again (only that its job is still
    known), and a changed one is checked against `held` less what the changed
    jobs held: the cost is that of the changes, not of the cluster.
    """
    if not isinstance(decision, Decision):
        raise InvalidDecision(f"schedule() returned {type(decision).__name__}, expected Decision")
    by_id: Mapping[str, JobView] = jobs if isinstance(jobs, Mapping) else {j.id: j for j in jobs}
    sizes = cluster.sizes
    allocs = decision.allocations
    if previous is None or held is None:
        changed = list(allocs)
        gone: list[str] = [] if previous is None else [j for j in previous if j not in allocs]
        _check_changed(allocs, changed, by_id, sizes, {}, {})
        return changed + gone
    before = previous.get
    # In C (map, compress): what changed among hundreds of allocations, in microseconds.
    changed = list(compress(allocs, map(is_not, map(before, allocs), allocs.values())))
    unknown = allocs.keys() - by_id.keys()
    if unknown:
        job_id = next(j for j in allocs if j in unknown)
        raise InvalidDecision(f"allocation for unknown or inactive job {job_id!r}")
    gone = [job_id for job_id in previous if job_id not in allocs] if len(allocs) - len(changed) < len(previous) else []
    # Devices the changed jobs give up are free to the others within this decision.
    freed: dict[str, set[int]] = {}
    for job_id in (*changed, *gone):
        old = before(job_id)
        if old:
            for node, devs in old.slots:
                freed.setdefault(node, set()).update(devs)
    taken = {node: {d for d in held.get(node, ()) if d not in devs} for node, devs in freed.items()}
    _check_changed(allocs, changed, by_id, sizes, taken, held)
    return changed + gone


def _check_changed(
    allocs: Mapping[str, Allocation],
    changed: Iterable[str],
    by_id: Mapping[str, JobView],
    sizes: Mapping[str, int],
    taken: dict[str, set[int]],
    held: Mapping[str, Collection[int]],
) -> None:
    """Check the allocations of `changed`: each valid, none on a device of `taken` (node -> devices, updated) or,
    for nodes absent from `taken`, of `held`."""
    for job_id in changed:
        alloc = allocs[job_id]
        job = by_id.get(job_id)
        if job is None:
            raise InvalidDecision(f"allocation for unknown or inactive job {job_id!r}")
        if isinstance(alloc, Allocation) and not alloc:
            raise InvalidDecision(f"job {job_id!r}: empty allocation (leave the job out of the decision instead)")
        why = check_allocation(job, alloc, sizes)
        if why is not None:
            raise InvalidDecision(why)
        for node, devs in alloc.slots:
            used = taken.get(node)
            if used is None:
                used = taken[node] = set(held.get(node, ()))
            for d in devs:
                if d in used:
                    raise InvalidDecision(f"device {d} of node {node!r} given twice (job {job_id!r})")
                used.add(d)


def plan(
    decision: Decision,
    current: Mapping[str, Allocation],
    order: Iterable[str] | None = None,
    *,
    keeps: bool = True,
    changed: Iterable[str] | None = None,
) -> list[Action]:
    """The actions that take every job from `current` (job id -> what it holds) to `decision`.

    Stopping actions come first (Preempt, Resize, Migrate: they free devices),
    then Start, then Keep; within a kind, jobs follow `order` (default:
    `current`'s order, then the decision's). Jobs that hold nothing and get
    nothing have no action.

    `keeps=False` leaves the Keep actions out. `changed` (e.g. what validate
    returned) limits the work to those job ids: every other job is taken to
    keep what it holds, so with `keeps=False` the cost is that of the changes.
    """
    ids: dict[str, None] = dict.fromkeys(order) if order is not None else {}
    if changed is not None:
        wanted = dict.fromkeys(changed)
        ids = {j: None for j in ids if j in wanted}
        ids.update(wanted)
        if keeps:
            ids.update(dict.fromkeys(current))
            ids.update(dict.fromkeys(decision.allocations))
    else:
        ids.update(dict.fromkeys(current))
        ids.update(dict.fromkeys(decision.allocations))
    stops: list[Action] = []
    starts: list[Action] = []
    keep_actions: list[Action] = []
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
            if keeps:
                keep_actions.append(Keep(job_id, old))
        elif new.num_devices != old.num_devices:
            stops.append(Resize(job_id, old, new))
        else:
            stops.append(Migrate(job_id, old, new))
    return stops + starts + keep_actions
