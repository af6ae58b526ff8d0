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

Fair share, with `fairshare=W` (W > 0; 0, the default, leaves all of this out):
jobs are ordered by the blend priority + W x F, where F in (0, 1] is the
user's fair-share factor (Slurm's classic factor, as in the `fairshare`
policy, configured by the same `shares`, `groups`, `group_shares` and
`half_life` options; see corral.sched.policies._usage). With W < 1 the factor
only orders jobs of one priority; with a larger W an under-served user's job
can start ahead of higher-priority ones, like Slurm's PriorityWeightFairshare.
Preemption still needs a strictly higher job priority (the integer, never the
blend, so that moving factors never make jobs preempt each other back and
forth); among the victims of one priority the users furthest over their share
go first.
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence
from itertools import accumulate

from corral.errors import UserError
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
from corral.sched.policies._usage import ShareTree, UsageLedger, half_life_option
from corral.sched.types import REASON_RESOURCES, REASON_UNSCHEDULABLE, ClusterView, Decision, JobView, Placer

SortKey = Callable[[JobView], tuple[float | str, ...]]


def priority_key(job: JobView) -> tuple[int, float, str]:
    """Higher priority first, then submission order."""
    return (-job.priority, job.submit_time, job.id)


def victim_key(job: JobView) -> tuple[int, float, str]:
    """Preemption order: lowest priority first, newest first among equals (it has lost least work)."""
    return (job.priority, -job.submit_time, job.id)


class PriorityPolicy(BasePolicy):
    """Priority first; preempts only preemptible, strictly lower-priority jobs, and only when that makes room."""

    name = "priority"

    def __init__(
        self,
        placer: Placer | str = "pack",
        *,
        elastic: bool = True,
        min_growth: int = 1,
        fairshare: float = 0.0,
        shares: Mapping[str, float] | None = None,
        groups: Mapping[str, str] | None = None,
        group_shares: Mapping[str, float] | None = None,
        half_life: float | None = None,
    ) -> None:
        super().__init__(placer)
        self.elastic, self.min_growth = elastic_options(self.name, elastic, min_growth)
        if isinstance(fairshare, bool) or not isinstance(fairshare, int | float) or not fairshare >= 0:
            raise UserError(f"priority fairshare must be a weight >= 0 (0: off), got {fairshare!r}")
        self.fairshare = float(fairshare)
        if not math.isfinite(self.fairshare):
            raise UserError(f"priority fairshare must be finite, got {fairshare!r}")
        fair_options = {"shares": shares, "groups": groups, "group_shares": group_shares, "half_life": half_life}
        if not self.fairshare and any(v is not None for v in fair_options.values()):
            named = ", ".join(k for k, v in fair_options.items() if v is not None)
            raise UserError(f"priority {named}: set fairshare=W (a weight > 0) to use fair share")
        self.tree = ShareTree.of(self.name, shares, groups, group_shares)
        self.usage: UsageLedger | None = None
        if self.fairshare:
            self.usage = UsageLedger() if half_life is None else UsageLedger(half_life_option(self.name, half_life))

    def schedule(self, now: float, jobs: Sequence[JobView], cluster: ClusterView) -> Decision:
        """Decide the round; with fair share, remember what each job holds until the next one."""
        decision = super().schedule(now, jobs, cluster)
        if self.usage is not None:
            self.usage.decided(decision)
        return decision

    def _keys(self, now: float, jobs: Sequence[JobView]) -> tuple[SortKey, SortKey]:
        """(queue order, victim order): plain priority, or blended with the fair-share factor."""
        if self.usage is None:
            return priority_key, victim_key
        self.usage.observe(now, jobs)
        factor = self.usage.factors((j.user for j in jobs), self.tree)
        w = self.fairshare
        return (
            lambda j: (-(j.priority + w * factor[j.user]), j.submit_time, j.id),
            lambda j: (j.priority, factor[j.user], -j.submit_time, j.id),
        )

    def counts(self, now: float, jobs: Sequence[JobView], cluster: ClusterView) -> tuple[Counts, Reasons]:
        """Who runs next round: borrowed devices first, then preemption of lower priority; spares grow elastic jobs."""
        total = cluster.total_devices
        queue_key, victim_order = self._keys(now, jobs)
        counts, waiting = split_running(jobs, node_sizes(cluster), only_pinned=False)
        by_id = {job.id: job for job in jobs}
        holds = lend_borrowed(by_id, counts, total) if self.elastic else {}  # what running jobs hold before lending
        free = total - sum(counts.values())
        holding = dict(counts)  # a preempted job that resumes this round keeps its count, hence its devices
        reasons: Reasons = {}
        # Preemptible running jobs in the order they would be preempted, with
        # prefix sums of their devices: "can lower-priority jobs make room?" is a
        # bisect, not a scan. Victims are always taken from the front.
        victims = sorted((by_id[j] for j in counts if by_id[j].preemptible), key=victim_order)
        prio = [v.priority for v in victims]
        held = [0, *accumulate(counts[v.id] for v in victims)]
        front = 0
        heap = [(queue_key(job), job) for job in waiting]
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
                    heapq.heappush(heap, (queue_key(victim), victim))
            counts[job.id] = k
            free -= k
        if self.elastic and free > 0:
            # Only elastic jobs lend or grow.
            order = sorted((by_id[j] for j in counts if by_id[j].elastic), key=queue_key)
            free = give_back(order, counts, holds, free)
            grow_elastic(order, counts, holds, free, reasons, total=total, min_growth=self.min_growth)
        return counts, reasons

    def __repr__(self) -> str:
        fair = f", fairshare={self.fairshare:g}" if self.fairshare else ""
        return (
            f"PriorityPolicy(placer={self.placer.name!r}, elastic={self.elastic}, min_growth={self.min_growth}{fair})"
        )
