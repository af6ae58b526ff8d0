"""Fair share in simulation: over a simulated day each user's device share converges to its configured share.

Two users on 2 nodes x 4 GPUs; one submits 10x more jobs than the other, and
both submit more than their share of the cluster, so the cluster is always
contended. Without fair share (FIFO order) the heavy user takes almost all
of it; under `fairshare` each user's device-seconds over the day are within
10% of its configured share.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from corral.sched import policies
from corral.sched.types import ClusterView, Decision, JobView
from corral.sim.engine import SimConfig, simulate
from corral.sim.tracejob import TraceJob

DAY = 86400.0
CLUSTER = ClusterView.uniform(2, 4)


class DeviceSeconds:
    """Wraps a policy and integrates each user's devices between rounds (a round follows every event)."""

    def __init__(self, inner, horizon: float) -> None:  # noqa: ANN001 - any Policy
        self.inner, self.name, self.horizon = inner, inner.name, horizon
        self.by_user: dict[str, float] = {}
        self._last: tuple[float, dict[str, int]] | None = None

    def schedule(self, now: float, jobs: Sequence[JobView], cluster: ClusterView) -> Decision:
        decision = self.inner.schedule(now, jobs, cluster)
        self.close(now)
        users = {j.id: j.user for j in jobs}
        held: dict[str, int] = {}
        for job_id, alloc in decision.allocations.items():
            held[users[job_id]] = held.get(users[job_id], 0) + alloc.num_devices
        self._last = (now, held)
        return decision

    def close(self, now: float) -> None:
        """Charge what the last decision held up to `now` (at most the horizon)."""
        if self._last is None:
            return
        since, held = self._last
        dt = max(0.0, min(now, self.horizon) - since)
        for user, k in held.items():
            self.by_user[user] = self.by_user.get(user, 0.0) + k * dt

    def shares(self) -> dict[str, float]:
        total = sum(self.by_user.values())
        return {u: s / total for u, s in sorted(self.by_user.items())}


def two_users(light_share: float, *, seed: int = 0) -> list[TraceJob]:
    """`heavy` submits 10x as many jobs as `light`; light alone asks for 1.5x its share of the cluster-day."""
    rng = np.random.default_rng(seed)
    sizes, mean = np.array([1, 2]), 7200.0  # 1-2 GPUs for 1-3 h: 3 device-hours on average
    light_jobs = int(round(1.5 * light_share * CLUSTER.total_devices * DAY / (1.5 * mean)))
    trace = []
    for user, n in (("light", light_jobs), ("heavy", 10 * light_jobs)):
        submit = np.sort(rng.uniform(0, 0.9 * DAY, n))
        gpus = rng.choice(sizes, n)
        duration = rng.uniform(0.5 * mean, 1.5 * mean, n)
        trace += [
            TraceJob(id=f"{user}-{i}", submit_time=float(submit[i]), gpus=int(gpus[i]), duration=float(duration[i]),
                     user=user)
            for i in range(n)
        ]  # fmt: skip
    return trace


def day_shares(policy, trace: list[TraceJob]) -> dict[str, float]:  # noqa: ANN001 - any Policy
    recorder = DeviceSeconds(policy, DAY)
    result = simulate(trace, recorder, CLUSTER, SimConfig(max_time=DAY))
    recorder.close(DAY)
    assert result.stopped == "max_time"
    return recorder.shares()


@pytest.mark.parametrize(("light", "heavy"), [(1, 1), (3, 1), (1, 3)])
def test_each_users_device_share_over_a_day_is_within_10_percent_of_its_share(light: int, heavy: int) -> None:
    target = {"heavy": heavy / (light + heavy), "light": light / (light + heavy)}
    trace = two_users(target["light"])
    policy = policies.get("fairshare", shares={"light": light, "heavy": heavy})
    got = day_shares(policy, trace)
    for user, share in target.items():
        assert got[user] == pytest.approx(share, rel=0.10), (user, got, target)


def test_without_fair_share_the_heavy_user_takes_the_cluster() -> None:
    # The same day under fifo (submission order): light gets about its fraction of the jobs, 1/11.
    got = day_shares(policies.get("fifo"), two_users(0.5))
    assert got["light"] < 0.15


def test_priority_with_a_fair_share_weight_comes_close() -> None:
    # All jobs have priority 0: the blend orders them by the fair-share factor alone.
    # priority starts jobs first fit, with no reservation, so heavy's 1-GPU jobs take
    # devices that light's 2-GPU jobs wait for: within 15% (0.45 measured), not 10%.
    policy = policies.get("priority", fairshare=1.0, shares={"light": 1, "heavy": 1})
    got = day_shares(policy, two_users(0.5))
    assert got["light"] == pytest.approx(0.5, rel=0.15)
