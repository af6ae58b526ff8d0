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

import math
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from itertools import pairwise

from corral.errors import UserError
from corral.sched.policies._common import (
    KEEP,
    ODD,
    PIN,
    UNSCHED,
    WAIT,
    Counts,
    IncrementalPolicy,
    Reasons,
    RoundMemo,
    fill_in_order,
    holds_valid,
    node_sizes,
    rigid_count,
    running_first,
    schedulable,
    split_running,
)
from corral.sched.types import REASON_UNSCHEDULABLE, ClusterView, JobView, Placer

# One and ten GPU-hours: short jobs finish in queue 0, long ones sink.
DEFAULT_THRESHOLDS = (3600.0, 36000.0)
DEFAULT_STARVATION_FACTOR = 10.0


class TiresiasPolicy(IncrementalPolicy):
    """Discretised 2D-LAS with FIFO inside each queue, preemptive, with starvation promotion.

    When every job's request fits, the order does not matter: every job gets
    its count, running jobs stay where they are and only the waiting ones are
    placed, in queue order. Such rounds are incremental (see
    IncrementalPolicy); a round in which the requests exceed the cluster
    orders every job.
    """

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

    def refresh_by(self, now: float, job: JobView) -> float:
        """The next time this running job's queue can change: it crosses a threshold, or its starvation status flips.

        Until then, a view of it built at `now` gives the queue a fresh view
        would: the queue of a reused view (service and run time frozen, the
        clock moving on) and of a fresh one are both constant up to that time.
        """
        n = job.allocation.num_devices
        if n <= 0:
            return now
        a, r = job.attained_service, job.run_time
        t = math.inf
        i = bisect_right(self.thresholds, a)
        if i < len(self.thresholds):
            t = now + (self.thresholds[i] - a) / n
        f = self.starvation_factor
        if f is not None:
            if r <= 0:
                return now  # a fresh view would see it promoted at once if it waited: no reuse
            waited = max(0.0, now - job.submit_time - r)  # constant while it runs
            if waited > f * r:
                t = min(t, now + waited / f - r)  # a fresh view drops back to its queue then
            else:
                t = min(t, job.submit_time + r + f * r)  # a reused view would look promoted from then
        # A margin well above rounding error: refreshing early is always safe.
        return t - (1e-6 + 1e-7 * abs(t)) if t < math.inf else t

    def classify(self, job: JobView, total: int, sizes: Mapping[str, int]) -> tuple[int, int]:
        """Running at its request: KEEP; non-preemptible and valid: PIN; waiting: WAIT or UNSCHED."""
        alloc = job.allocation
        if alloc:
            if not holds_valid(job, sizes):
                return ODD, 0
            n = alloc.num_devices
            if not job.preemptible:
                return PIN, n
            return (KEEP, n) if n == rigid_count(job, total) else (ODD, 0)
        if not schedulable(job, total):
            return UNSCHED, 0
        return WAIT, rigid_count(job, total)

    def decide(self, now: float, memo: RoundMemo, total: int) -> tuple[list[tuple[str, int]], Reasons] | None:
        """When every request fits: everyone runs, the waiting jobs placed in queue order; None otherwise."""
        if memo.sums[KEEP] + memo.sums[WAIT] > total - memo.sums[PIN]:
            return None
        kind, count = memo.kind, memo.count
        reasons: Reasons = {}
        waiting = []
        for job in memo.waiting.values():
            if kind[job.id] == UNSCHED:
                reasons[job.id] = REASON_UNSCHEDULABLE
            else:
                waiting.append(job)
        waiting.sort(key=lambda j: (self.queue(now, j), j.submit_time, j.id))
        # Largest first, queue order among equals: the order `place` gives fresh demands.
        return sorted(((j.id, count[j.id]) for j in waiting), key=lambda kv: -kv[1]), reasons

    def __repr__(self) -> str:
        return (
            f"TiresiasPolicy(placer={self.placer.name!r}, thresholds={list(self.thresholds)}, "
            f"starvation_factor={self.starvation_factor})"
        )
