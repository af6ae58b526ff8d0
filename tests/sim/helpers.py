"""Shared helpers of the simulator tests: trace builders and deliberately broken policies."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from corral.sched.types import Allocation, ClusterView, Decision, JobView
from corral.sim.traces import TraceJob

TRACES = Path(__file__).parents[2].parent / "shared" / "traces"


def job(jid: str, submit: float, gpus: int, duration: float, **kw: object) -> TraceJob:
    """A plain trace job."""
    return TraceJob(id=jid, submit_time=submit, gpus=gpus, duration=duration, **kw)  # type: ignore[arg-type]


class FixedPolicy:
    """Returns the same allocations every round (for contract-violation tests)."""

    name = "fixed"

    def __init__(self, allocations: dict[str, Allocation]) -> None:
        self.allocations = allocations

    def schedule(self, now: float, jobs: Sequence[JobView], cluster: ClusterView) -> Decision:
        """The fixed allocations, for the jobs that are active."""
        active = {j.id for j in jobs}
        return Decision({k: v for k, v in self.allocations.items() if k in active})


class IdlePolicy:
    """Never schedules anything."""

    name = "idle"

    def schedule(self, now: float, jobs: Sequence[JobView], cluster: ClusterView) -> Decision:
        """Nothing runs."""
        return Decision({})
