"""Priority with preemption: higher priority first; a job that cannot fit preempts strictly lower ones.

Elastic jobs (min_gpus < max_gpus), unless `elastic=False`:

- Devices a running elastic job holds above its request are borrowed: any
  waiting job, whatever its priority, takes them before anyone is preempted.
  That shrinks the lender toward its request, never below; below its request a
  job is only preempted, entirely, by the usual rule.
- Devices nobody took go back to the jobs that lent them (which then stay in
  place); what is still free grows elastic jobs up to max_gpus in priority
  order, but only while no job waits for Resources, and a running job only by
  at least `min_growth` devices (a resize restarts it).
"""

from __future__ import annotations

import heapq
from bisect import bisect_left
from collections.abc import Sequence
from itertools import accumulate

from corral.sched.policies._common import (
    BasePolicy,
    Counts,
    Reasons,
    elastic_options,
    give_back,
    grow_elastic,
    lend_borrowed,
    node_sizes,
    rigid_count,
    schedulable,
    split_running,
)
from corral.sched.types import REASON_RESOURCES, REASON_UNSCHEDULABLE, ClusterView, JobView, Placer


def priority_key(job: JobView) -> tuple[int, float, str]:
    """Higher priority first, then submission order."""
    return (-job.priority, job.submit_time, job.id)


def victim_key(job: JobView) -> tuple[int, float, str]:
    """Preemption order: lowest priority first, newest first among equals (it has lost least work)."""
    return (job.priority, -job.submit_time, job.id)


class PriorityPolicy(BasePolicy):
    """Priority first; preempts only preemptible, strictly lower-priority jobs, and only when that makes room."""

    name = "priority"

    def __init__(self, placer: Placer | str = "pack", *, elastic: bool = True, min_growth: int = 1) -> None:
        super().__init__(placer)
        self.elastic, self.min_growth = elastic_options(self.name, elastic, min_growth)

    def counts(self, now: float, jobs: Sequence[JobView], cluster: ClusterView) -> tuple[Counts, Reasons]:
        """Who runs next round: borrowed devices first, then preemption of lower priority; spares grow elastic jobs."""
        total = cluster.total_devices
        counts, waiting = split_running(jobs, node_sizes(cluster), only_pinned=False)
        by_id = {job.id: job for job in jobs}
        holds = lend_borrowed(by_id, counts, total) if self.elastic else {}  # what running jobs hold before lending
        free = total - sum(counts.values())
        holding = dict(counts)  # a preempted job that resumes this round keeps its count, hence its devices
        reasons: Reasons = {}
        # Preemptible running jobs in the order they would be preempted, with
        # prefix sums of their devices: "can lower-priority jobs make room?" is a
        # bisect, not a scan. Victims are always taken from the front.
        victims = sorted((by_id[j] for j in counts if by_id[j].preemptible), key=victim_key)
        prio = [v.priority for v in victims]
        held = [0, *accumulate(counts[v.id] for v in victims)]
        front = 0
        heap = [(priority_key(job), job) for job in waiting]
        heapq.heapify(heap)
        while heap:
            _, job = heapq.heappop(heap)
            if not schedulable(job, total):
                reasons[job.id] = REASON_UNSCHEDULABLE
                continue
            k = holding.get(job.id) or rigid_count(job, total)
            if k > free:
                lower = max(bisect_left(prio, job.priority), front)  # victims[front:lower] rank strictly lower
                if free + held[lower] - held[front] < k:
                    reasons[job.id] = REASON_RESOURCES  # even preempting them all would not do
                    continue
                while free < k:
                    victim = victims[front]
                    front += 1
                    free += counts.pop(victim.id)
                    # The victim waits again at its own priority; it resumes later
                    # this round if devices remain once the jobs above it are served.
                    heapq.heappush(heap, (priority_key(victim), victim))
            counts[job.id] = k
            free -= k
        if self.elastic and free > 0:
            # Only elastic jobs lend or grow.
            order = sorted((by_id[j] for j in counts if by_id[j].elastic), key=priority_key)
            free = give_back(order, counts, holds, free)
            grow_elastic(order, counts, holds, free, reasons, total=total, min_growth=self.min_growth)
        return counts, reasons

    def __repr__(self) -> str:
        return f"PriorityPolicy(placer={self.placer.name!r}, elastic={self.elastic}, min_growth={self.min_growth})"
