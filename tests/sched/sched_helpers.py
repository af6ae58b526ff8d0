"""Builders and invariant checks shared by the corral.sched tests (a plain module: see its importers)."""

from __future__ import annotations

from collections.abc import Sequence

from corral.sched.plan import InvalidDecision, validate
from corral.sched.types import (
    REASON_PRIORITY,
    REASON_RESOURCES,
    REASON_UNSCHEDULABLE,
    Allocation,
    ClusterView,
    Decision,
    JobView,
)

REASONS = {REASON_RESOURCES, REASON_PRIORITY, REASON_UNSCHEDULABLE}


def alloc(**nodes: Sequence[int]) -> Allocation:
    """alloc(n0=[0, 1]) -> Allocation."""
    return Allocation.of(nodes)


def job(job_id: str, gpus: int = 1, *, lo: int | None = None, hi: int | None = None, **kw: object) -> JobView:
    """A job asking for `gpus` devices; rigid unless lo/hi widen its range."""
    return JobView(
        id=job_id,
        gpus=gpus,
        min_gpus=lo if lo is not None else gpus,
        max_gpus=hi if hi is not None else gpus,
        **kw,  # type: ignore[arg-type]
    )


def as_dicts(decision: Decision) -> dict[str, dict[str, list[int]]]:
    """The decision's allocations as plain dicts, for readable asserts."""
    return {job_id: a.as_dict() for job_id, a in decision.allocations.items()}


def check_decision(decision: Decision, jobs: Sequence[JobView], cluster: ClusterView) -> None:
    """Assert the invariants every policy keeps (DESIGN.md, 'The scheduling contract').

    The contract itself is corral.sched.plan.validate (the check the simulator and the
    service run); on top of it, every waiting job has the right reason and no running one has one.
    """
    try:
        validate(decision, jobs, cluster)
    except InvalidDecision as exc:
        raise AssertionError(f"invalid decision: {exc}") from None
    for j in jobs:
        if j.id in decision.allocations:
            assert j.id not in decision.reasons, f"{j.id} runs but has a reason"
        else:
            assert decision.reasons.get(j.id) in REASONS, f"{j.id} waits without a reason"
            unschedulable = max(j.min_gpus, 1) > min(j.max_gpus, cluster.total_devices)
            assert (decision.reasons[j.id] == REASON_UNSCHEDULABLE) == unschedulable, (j, decision.reasons[j.id])
