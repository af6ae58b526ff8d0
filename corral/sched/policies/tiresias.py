"""Tiresias' discretised two-dimensional least-attained-service (Gu et al., NSDI'19, section 4).

A job's attained service is GPUs x time (device-seconds). Queues are cut at
`thresholds`: a job with less service than thresholds[0] is in queue 0 (highest
priority), and so on. Within a queue jobs run FIFO by submit time; lower
queues are served first, preempting jobs of higher queues.

Starvation guard (the paper's STARVE_LIMIT): a job that has waited longer than
`starvation_factor` times the time it has run is promoted to queue 0. The
policy is stateless, so the wait is measured as wall time since submission not
spent running; once the promoted job has run long enough it drops back.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from itertools import pairwise

from corral.errors import UserError
from corral.sched.policies._common import (
    BasePolicy,
    Counts,
    Reasons,
    fill_in_order,
    node_sizes,
    running_first,
    split_running,
)
from corral.sched.types import ClusterView, JobView, Placer

# One and ten GPU-hours: short jobs finish in queue 0, long ones sink.
DEFAULT_THRESHOLDS = (3600.0, 36000.0)
DEFAULT_STARVATION_FACTOR = 10.0


class TiresiasPolicy(BasePolicy):
    """Discretised 2D-LAS with FIFO inside each queue, preemptive, with starvation promotion."""

    name = "tiresias"

    def __init__(
        self,
        placer: Placer | str = "pack",
        *,
        thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
        starvation_factor: float | None = DEFAULT_STARVATION_FACTOR,
    ) -> None:
        super().__init__(placer)
        cuts = tuple(float(t) for t in thresholds)
        if any(t <= 0 for t in cuts) or any(b <= a for a, b in pairwise(cuts)):
            raise UserError(f"tiresias thresholds must be positive and increasing, got {list(cuts)}")
        if starvation_factor is not None and starvation_factor <= 0:
            raise UserError(f"tiresias starvation_factor must be > 0 (or None to disable), got {starvation_factor}")
        self.thresholds = cuts
        self.starvation_factor = starvation_factor

    def queue(self, now: float, job: JobView) -> int:
        """The job's queue: 0 is served first."""
        if self.starvation_factor is not None and job.run_time > 0:
            waited = max(0.0, now - job.submit_time - job.run_time)
            if waited > self.starvation_factor * job.run_time:
                return 0
        return bisect_right(self.thresholds, job.attained_service)

    def counts(self, now: float, jobs: Sequence[JobView], cluster: ClusterView) -> tuple[Counts, Reasons]:
        """Serve queue 0 first, FIFO within a queue, first fit; non-preemptible running jobs stay."""
        total = cluster.total_devices
        counts, rest = split_running(jobs, node_sizes(cluster), only_pinned=True)
        order = sorted(rest, key=lambda j: (self.queue(now, j), j.submit_time, running_first(j), j.id))
        reasons: Reasons = {}
        fill_in_order(order, total - sum(counts.values()), counts, reasons, total=total)
        return counts, reasons

    def __repr__(self) -> str:
        return (
            f"TiresiasPolicy(placer={self.placer.name!r}, thresholds={list(self.thresholds)}, "
            f"starvation_factor={self.starvation_factor})"
        )
