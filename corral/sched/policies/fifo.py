"""First in, first out, strictly: the oldest waiting job that does not fit blocks every later one."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from corral.sched.policies._common import (
    KEEP,
    ODD,
    WAIT,
    Counts,
    IncrementalPolicy,
    Reasons,
    RoundMemo,
    fill_in_order,
    holds_valid,
    node_sizes,
    split_running,
)
from corral.sched.types import ClusterView, JobView


def fifo_key(job: JobView) -> tuple[float, str]:
    """Submission order: submit time, then id."""
    return (job.submit_time, job.id)


class FifoPolicy(IncrementalPolicy):
    """Strict head-of-line FIFO, non-preemptive: running jobs keep their devices.

    A round only starts waiting jobs, so it is incremental: running jobs are
    remembered with their devices, and a round costs the changes plus the
    waiting jobs (see IncrementalPolicy).
    """

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

    def refresh_by(self, now: float, job: JobView) -> float:
        """Never: FIFO reads no field that moves while a job runs (service, run time, progress)."""
        return math.inf

    def classify(self, job: JobView, total: int, sizes: Mapping[str, int]) -> tuple[int, int]:
        """Running with a valid allocation: KEEP its devices; holding nothing: WAIT."""
        if job.allocation:
            return (KEEP, job.allocation.num_devices) if holds_valid(job, sizes) else (ODD, 0)
        return WAIT, 0

    def decide(self, now: float, memo: RoundMemo, total: int) -> tuple[list[tuple[str, int]], Reasons] | None:
        """`counts` for the waiting jobs on the devices the running ones leave."""
        counts: Counts = {}
        reasons: Reasons = {}
        waiting = sorted(memo.waiting.values(), key=fifo_key)
        fill_in_order(waiting, total - memo.sums[KEEP], counts, reasons, total=total, blocking=True)
        # Largest first, FIFO among equals: the order `place` gives fresh demands.
        return sorted(counts.items(), key=lambda kv: -kv[1]), reasons
