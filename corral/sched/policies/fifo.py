"""First in, first out, strictly: the oldest waiting job that does not fit blocks every later one."""

from __future__ import annotations

from collections.abc import Sequence

from corral.sched.policies._common import BasePolicy, Counts, Reasons, fill_in_order, node_sizes, split_running
from corral.sched.types import ClusterView, JobView


def fifo_key(job: JobView) -> tuple[float, str]:
    """Submission order: submit time, then id."""
    return (job.submit_time, job.id)


class FifoPolicy(BasePolicy):
    """Strict head-of-line FIFO, non-preemptive: running jobs keep their devices."""

    name = "fifo"

    def counts(self, now: float, jobs: Sequence[JobView], cluster: ClusterView) -> tuple[Counts, Reasons]:
        """Running jobs keep their count; waiting jobs start in submit order until one does not fit."""
        sizes = node_sizes(cluster)
        total = cluster.total_devices
        counts, waiting = split_running(jobs, sizes, only_pinned=False)
        reasons: Reasons = {}
        capacity = total - sum(counts.values())
        fill_in_order(sorted(waiting, key=fifo_key), capacity, counts, reasons, total=total, blocking=True)
        return counts, reasons
