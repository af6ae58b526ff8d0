"""Priority with preemption: higher priority first; a job that cannot fit preempts strictly lower ones."""

from __future__ import annotations

import heapq
from bisect import bisect_left
from collections.abc import Sequence
from itertools import accumulate

from corral.sched.policies._common import (
    BasePolicy,
    Counts,
    Reasons,
    node_sizes,
    rigid_count,
    schedulable,
    split_running,
)
from corral.sched.types import REASON_RESOURCES, REASON_UNSCHEDULABLE, ClusterView, JobView


def priority_key(job: JobView) -> tuple[int, float, str]:
    """Higher priority first, then submission order."""
    return (-job.priority, job.submit_time, job.id)


def victim_key(job: JobView) -> tuple[int, float, str]:
    """Preemption order: lowest priority first, newest first among equals (it has lost least work)."""
    return (job.priority, -job.submit_time, job.id)


class PriorityPolicy(BasePolicy):
    """Priority first; preempts only preemptible, strictly lower-priority jobs, and only when that makes room."""

    name = "priority"

    def counts(self, now: float, jobs: Sequence[JobView], cluster: ClusterView) -> tuple[Counts, Reasons]:
        """Running jobs keep their devices unless a higher-priority waiting job needs them."""
        total = cluster.total_devices
        counts, waiting = split_running(jobs, node_sizes(cluster), only_pinned=False)
        by_id = {job.id: job for job in jobs}
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
        return counts, reasons
