"""Per-user and per-group device quotas, enforced around any policy (like Slurm's GrpTRES limits).

`WithQuotas(policy, quotas)` is itself a policy: it asks the inner policy, and
when the decision would have a user or a group hold more devices than its quota
it caps or removes the jobs that overflow and asks again, so the devices they
would have taken go to jobs within their quotas (work-conserving, and the
inner policy's own logic decides where they go). Jobs held back wait with the
reason QuotaDevices (squeue's AssocGrpGRES). Which jobs keep their devices
first: running jobs that keep their allocation, then higher priority, then the
earlier submit. A running job over a quota that was lowered is preempted, so
no user or group ever holds more than its quota after a round (a non-preemptible
running job is the one exception: it keeps its devices, and counts first).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from corral.sched.types import ClusterView, Decision, JobView, Policy

REASON_QUOTA = "QuotaDevices"  # waits because its user's or group's device quota is used up
MAX_PASSES = 4  # policy calls per round; each pass removes every overflow it sees


@dataclass(frozen=True)
class Quotas:
    """Device quotas: user -> max devices, group -> max devices, and each user's group."""

    users: Mapping[str, int] = field(default_factory=dict)
    groups: Mapping[str, int] = field(default_factory=dict)
    group_of: Mapping[str, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.users or self.groups)

    def limits(self, user: str) -> list[tuple[str, int]]:
        """(account key, max devices) of every quota that `user`'s jobs count against."""
        out = []
        if user in self.users:
            out.append((f"user:{user}", self.users[user]))
        group = self.group_of.get(user)
        if group is not None and group in self.groups:
            out.append((f"group:{group}", self.groups[group]))
        return out


def held(decision: Decision, jobs: Sequence[JobView], quotas: Quotas) -> dict[str, int]:
    """Devices each quota account (user:NAME, group:NAME) holds under `decision`."""
    users = {j.id: j.user for j in jobs}
    out: dict[str, int] = defaultdict(int)
    for job_id, alloc in decision.allocations.items():
        for key, _ in quotas.limits(users.get(job_id, "")):
            out[key] += alloc.num_devices
    return dict(out)


class WithQuotas:
    """A policy with device quotas enforced around it (see the module docstring)."""

    def __init__(self, inner: Policy, quotas: Quotas) -> None:
        self.inner = inner
        self.quotas = quotas

    @property
    def name(self) -> str:
        """The inner policy's name."""
        return self.inner.name

    def schedule(self, now: float, jobs: tuple[JobView, ...] | list[JobView], cluster: ClusterView) -> Decision:
        """The inner policy's decision, trimmed so that no quota is exceeded."""
        if not self.quotas:
            return self.inner.schedule(now, jobs, cluster)
        views = {j.id: j for j in jobs}
        held_back: set[str] = set()
        for attempt in range(MAX_PASSES):
            decision = self.inner.schedule(now, list(views.values()), cluster)
            trims = _overflow(decision, list(views.values()), self.quotas)
            if not trims:
                return _with_reasons(decision, held_back)
            if attempt == MAX_PASSES - 1:
                break
            for job_id, room in trims.items():
                view = views[job_id]
                if room is None:
                    held_back.add(job_id)
                    del views[job_id]
                else:  # an elastic job that fits with fewer devices: offer it only those
                    views[job_id] = dataclasses.replace(view, max_gpus=room, gpus=min(view.requested, room))
        # Still over after the last pass: the overflowing jobs get nothing this round.
        allocations = {j: a for j, a in decision.allocations.items() if j not in trims}
        held_back |= set(trims)
        return _with_reasons(Decision(allocations, dict(decision.reasons)), held_back)


def _overflow(decision: Decision, jobs: Sequence[JobView], quotas: Quotas) -> dict[str, int | None]:
    """Jobs whose allocation overflows a quota: job id -> the devices it could have, or None for none."""
    allocated = [j for j in jobs if j.id in decision.allocations]

    def preference(j: JobView) -> tuple[int, int, float, str]:
        # Non-preemptible running jobs are never cut, so they count first; then jobs that keep their devices.
        pinned = j.is_running and not j.preemptible
        keeps = j.is_running and decision.allocations[j.id] == j.allocation
        return (0 if pinned else 1 if keeps else 2, -j.priority, j.submit_time, j.id)

    used: dict[str, int] = defaultdict(int)
    trims: dict[str, int | None] = {}
    for job in sorted(allocated, key=preference):
        n = decision.allocations[job.id].num_devices
        limits = quotas.limits(job.user)
        room = min((limit - used[key] for key, limit in limits), default=n)
        pinned = job.is_running and not job.preemptible
        if n <= room or pinned:
            take = n
        elif room >= job.min_gpus and room >= 1:
            trims[job.id], take = room, room
        else:
            trims[job.id], take = None, 0
        for key, _ in limits:
            used[key] += take
    return trims


def _with_reasons(decision: Decision, held_back: set[str]) -> Decision:
    reasons = dict(decision.reasons)
    for job_id in held_back:
        if job_id not in decision.allocations:
            reasons[job_id] = REASON_QUOTA
    return Decision(dict(decision.allocations), reasons)
