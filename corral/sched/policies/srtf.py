"""Shortest remaining time first, preemptive: the job closest to finishing runs first."""

from __future__ import annotations

import math
from collections.abc import Sequence

from corral.sched.policies._common import (
    BasePolicy,
    Counts,
    Reasons,
    fill_in_order,
    node_sizes,
    running_first,
    split_running,
)
from corral.sched.types import ClusterView, JobView


def srtf_key(job: JobView) -> tuple[float, int, float, str]:
    """Remaining seconds (unknown last), running before waiting on ties, then submission order."""
    remaining = job.remaining_estimate()
    return (math.inf if remaining is None else remaining, running_first(job), job.submit_time, job.id)


class SrtfPolicy(BasePolicy):
    """SRTF over remaining_estimate(); preempts any preemptible job a shorter one needs devices from."""

    name = "srtf"

    def counts(self, now: float, jobs: Sequence[JobView], cluster: ClusterView) -> tuple[Counts, Reasons]:
        """Non-preemptible running jobs stay; everyone else is served shortest-remaining first (first fit)."""
        total = cluster.total_devices
        counts, rest = split_running(jobs, node_sizes(cluster), only_pinned=True)
        reasons: Reasons = {}
        fill_in_order(sorted(rest, key=srtf_key), total - sum(counts.values()), counts, reasons, total=total)
        return counts, reasons
