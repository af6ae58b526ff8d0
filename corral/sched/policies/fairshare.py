"""Fair share: the jobs of the users furthest below their share of recent device-seconds first.

Each waiting job is ranked by its user's fair-share factor F = 2^(-U/S) (Slurm's
classic factor; groups, decay and where usage comes from: see
corral.sched.policies._usage), highest first, then by submit time. F is 1 for
a user who used nothing lately, 1/2 for one exactly at its share.

- Running jobs keep their devices (shares are reached as jobs end), unless
  `preempt` is set: then a waiting job that does not fit may preempt
  preemptible running jobs of users whose factor is below its user's by more
  than a factor 2^preempt_margin, those with the lowest factor first (newest
  first among equals), and only when that makes room. The margin keeps two
  users near their shares from preempting each other back and forth as their
  factors cross.
- The first job in that order that cannot start (the head) gets an EASY
  reservation, as in fifo-backfill: a later job starts only if it fits now and
  ends before the head's reservation or uses devices spare then, and never
  preempts. Without it, the small jobs of users over their share would take
  every device that frees up while a larger job of a user under its share
  waits. Without duration estimates the reservation is unknown and later
  jobs start first fit.

Elastic jobs get their request (`gpus`), as in themis.
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from itertools import accumulate

from corral.errors import UserError
from corral.sched.policies._common import (
    BasePolicy,
    Counts,
    Reasons,
    node_sizes,
    rigid_count,
    schedulable,
    split_running,
)
from corral.sched.policies._usage import DEFAULT_HALF_LIFE, ShareTree, UsageLedger, half_life_option
from corral.sched.policies.backfill import reservation
from corral.sched.types import (
    REASON_PRIORITY,
    REASON_RESOURCES,
    REASON_UNSCHEDULABLE,
    ClusterView,
    Decision,
    JobView,
    Placer,
)


class FairSharePolicy(BasePolicy):
    """Highest fair-share factor first; preempts only with `preempt=True`, across a margin of factors."""

    name = "fairshare"

    def __init__(
        self,
        placer: Placer | str = "pack",
        *,
        shares: Mapping[str, float] | None = None,
        groups: Mapping[str, str] | None = None,
        group_shares: Mapping[str, float] | None = None,
        half_life: float = DEFAULT_HALF_LIFE,
        preempt: bool = False,
        preempt_margin: float = 1.0,
    ) -> None:
        super().__init__(placer)
        self.tree = ShareTree.of(self.name, shares, groups, group_shares)
        self.usage = UsageLedger(half_life_option(self.name, half_life))
        if not isinstance(preempt, bool):
            raise UserError(f"fairshare preempt must be true or false, got {preempt!r}")
        if isinstance(preempt_margin, bool) or not isinstance(preempt_margin, int | float) or not preempt_margin >= 0:
            raise UserError(f"fairshare preempt_margin must be a number >= 0, got {preempt_margin!r}")
        self.preempt = preempt
        self.preempt_margin = float(preempt_margin)

    def factors(self, jobs: Sequence[JobView] = ()) -> dict[str, float]:
        """User -> fair-share factor from the usage recorded so far (every known user and those of `jobs`)."""
        return self.usage.factors((j.user for j in jobs), self.tree)

    def schedule(self, now: float, jobs: Sequence[JobView], cluster: ClusterView) -> Decision:
        """Decide the round, then remember what each job holds until the next one (for usage accounting)."""
        decision = super().schedule(now, jobs, cluster)
        self.usage.decided(decision)
        return decision

    def counts(self, now: float, jobs: Sequence[JobView], cluster: ClusterView) -> tuple[Counts, Reasons]:
        """Waiting jobs start in decreasing factor, EASY-backfilled behind the first that cannot start."""
        self.usage.observe(now, jobs)
        factor = self.factors(jobs)
        total = cluster.total_devices
        counts, waiting = split_running(jobs, node_sizes(cluster), only_pinned=False)
        by_id = {job.id: job for job in jobs}
        free = total - sum(counts.values())
        holding = dict(counts)  # a victim that resumes this round keeps its count, hence its devices
        reasons: Reasons = {}

        def key(j: JobView) -> tuple[float, float, str]:
            return (-factor[j.user], j.submit_time, j.id)

        # Preemptible running jobs in the order they would be preempted, with prefix
        # sums of their devices: "can the jobs below this factor make room?" is a bisect.
        victims = (
            sorted(
                (by_id[j] for j in counts if by_id[j].preemptible), key=lambda j: (factor[j.user], -j.submit_time, j.id)
            )
            if self.preempt
            else []
        )
        below = [factor[v.user] for v in victims]
        held = [0, *accumulate(counts[v.id] for v in victims)]
        margin = 2.0**self.preempt_margin
        front = 0
        head: JobView | None = None
        shadow, extra = math.inf, 0
        order = sorted(waiting, key=key)
        back: list[tuple[tuple[float, float, str], JobView]] = []  # victims, waiting again this round
        i = 0
        while i < len(order) or back:
            # The next job in factor order: from the sorted waiting jobs or the victims.
            if back and (i >= len(order) or back[0][0] < key(order[i])):
                job = heapq.heappop(back)[1]
            else:
                job = order[i]
                i += 1
            if not schedulable(job, total):
                reasons[job.id] = REASON_UNSCHEDULABLE
                continue
            k = holding.get(job.id) or rigid_count(job, total)
            if head is None:
                if k > free and victims:
                    # victims[front:lower] have a factor below this job's by more than the margin.
                    lower = max(bisect_left(below, factor[job.user] / margin), front)
                    if free + held[lower] - held[front] >= k:
                        while free < k:
                            victim = victims[front]
                            front += 1
                            free += counts.pop(victim.id)
                            heapq.heappush(back, (key(victim), victim))
                if k <= free:
                    counts[job.id] = k
                    free -= k
                    continue
                # The head: it waits for running jobs to end; later jobs must not delay it.
                head = job
                reasons[job.id] = REASON_RESOURCES
                running = [(by_id[j].remaining_estimate(), c) for j, c in counts.items()]
                shadow, extra = reservation(now, k, free, running)
                continue
            if k > free:
                reasons[job.id] = REASON_RESOURCES
                continue
            remaining = job.remaining_estimate()
            if (math.inf if remaining is None else now + remaining) <= shadow:  # done before the head needs them
                counts[job.id] = k
                free -= k
            elif k <= extra:  # on devices the head will not need
                counts[job.id] = k
                free -= k
                extra -= k
            else:
                reasons[job.id] = REASON_PRIORITY
        return counts, reasons

    def __repr__(self) -> str:
        half_life = "inf" if math.isinf(self.usage.half_life) else f"{self.usage.half_life:g}"
        return (
            f"FairSharePolicy(placer={self.placer.name!r}, half_life={half_life}, preempt={self.preempt}, "
            f"preempt_margin={self.preempt_margin:g})"
        )
