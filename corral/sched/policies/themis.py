"""Finish-time fairness, after Themis (Mahajan et al., NSDI'20).

rho = T_shared / T_ideal: the time a job will have taken in the shared cluster
over the time it would take alone on a 1/N share of it (N active jobs). The
jobs with the largest rho (treated worst so far) are served first.

- With a duration estimate: T_shared = time since submission + remaining time
  at the devices it holds (at its request when waiting); T_ideal = work /
  min(request, cluster/N), work = duration_estimate x request device-seconds.
- Without one, finish-time fairness of the work done so far: rho = time since
  submission / (attained_service / min(request, cluster/N)); a job that has
  received nothing yet has rho = inf and goes first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from corral.sched.policies._common import (
    BasePolicy,
    Counts,
    Reasons,
    fill_in_order,
    node_sizes,
    rigid_count,
    running_first,
    split_running,
)
from corral.sched.types import ClusterView, JobView


def finish_time_fairness(now: float, job: JobView, share: float, total: int) -> float:
    """The job's rho = T_shared / T_ideal for a fair share of `share` devices (larger is worse off)."""
    request = rigid_count(job, max(total, 1))
    fair = min(float(request), share)
    elapsed = max(0.0, now - job.submit_time)
    remaining = job.remaining_estimate()
    if job.duration_estimate is not None and remaining is not None:
        ideal = job.duration_estimate * request / fair if fair > 0 else math.inf
        held = job.allocation.num_devices or request
        shared = elapsed + remaining * request / held
        return shared / ideal if ideal > 0 else math.inf
    if job.attained_service <= 0:
        return math.inf
    return elapsed * fair / job.attained_service


class ThemisPolicy(BasePolicy):
    """Serve the jobs with the worst finish-time fairness first; preemptive, first fit."""

    name = "themis"

    def counts(self, now: float, jobs: Sequence[JobView], cluster: ClusterView) -> tuple[Counts, Reasons]:
        """Non-preemptible running jobs stay; the rest in decreasing rho (running first on ties)."""
        total = cluster.total_devices
        counts, rest = split_running(jobs, node_sizes(cluster), only_pinned=True)
        share = total / max(len(jobs), 1)
        rho = {job.id: finish_time_fairness(now, job, share, total) for job in rest}
        order = sorted(rest, key=lambda j: (-rho[j.id], running_first(j), j.submit_time, j.id))
        reasons: Reasons = {}
        fill_in_order(order, total - sum(counts.values()), counts, reasons, total=total)
        return counts, reasons
