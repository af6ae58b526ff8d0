"""FIFO with EASY backfilling (Lifka 1995; Mu'alem & Feitelson 2001).

The oldest waiting job that does not fit (the head) gets a reservation: the
earliest time enough devices free up, from the running jobs' remaining_estimate().
A later job may start now only if it fits now and either finishes before that
time or uses only devices that are spare at that time, so backfilling never
delays the head. Running jobs with no estimate are taken to run forever; when
the head's reservation therefore cannot be computed, the policy falls back to
first fit in FIFO order.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from corral.sched.policies._common import (
    BasePolicy,
    Counts,
    Reasons,
    node_sizes,
    rigid_count,
    schedulable,
    split_running,
)
from corral.sched.policies.fifo import fifo_key
from corral.sched.types import REASON_PRIORITY, REASON_RESOURCES, REASON_UNSCHEDULABLE, ClusterView, JobView


def reservation(now: float, need: int, free_now: int, running: Iterable[tuple[float | None, int]]) -> tuple[float, int]:
    """(shadow time, spare devices then): when `need` devices will be free, given running (remaining s, devices).

    Remaining None means unknown (never frees); the shadow time is inf when the
    known ends never free enough devices.
    """
    if need <= free_now:
        return now, free_now - need
    ends = sorted((math.inf if rem is None else now + rem, k) for rem, k in running)
    free = free_now
    i = 0
    while i < len(ends):
        t = ends[i][0]
        # Every job ending at the same moment frees its devices together.
        while i < len(ends) and ends[i][0] == t:
            free += ends[i][1]
            i += 1
        if free >= need:
            return t, free - need
    return math.inf, 0


class BackfillPolicy(BasePolicy):
    """FIFO with EASY backfilling, non-preemptive: running jobs keep their devices."""

    name = "fifo-backfill"

    def counts(self, now: float, jobs: Sequence[JobView], cluster: ClusterView) -> tuple[Counts, Reasons]:
        """Start jobs in FIFO order; behind the first that does not fit, backfill what cannot delay it."""
        total = cluster.total_devices
        counts, waiting = split_running(jobs, node_sizes(cluster), only_pinned=False)
        by_id = {job.id: job for job in jobs}
        running = [(by_id[job_id].remaining_estimate(), k) for job_id, k in counts.items()]
        free = total - sum(counts.values())
        reasons: Reasons = {}
        head: JobView | None = None
        shadow, extra = math.inf, 0
        for job in sorted(waiting, key=fifo_key):
            if not schedulable(job, total):
                reasons[job.id] = REASON_UNSCHEDULABLE
                continue
            k = rigid_count(job, total)
            if head is None:
                if k <= free:
                    counts[job.id] = k
                    free -= k
                    running.append((job.remaining_estimate(), k))
                    continue
                head = job
                reasons[job.id] = REASON_RESOURCES
                shadow, extra = reservation(now, k, free, running)
                continue
            if k > free:
                reasons[job.id] = REASON_RESOURCES
                continue
            remaining = job.remaining_estimate()
            end = math.inf if remaining is None else now + remaining
            if end <= shadow:  # gives its devices back before the head needs them
                counts[job.id] = k
                free -= k
            elif k <= extra:  # runs on devices the head will not need
                counts[job.id] = k
                free -= k
                extra -= k
            else:
                reasons[job.id] = REASON_PRIORITY
        return counts, reasons
