"""How fast a simulated job makes progress under an allocation: the simulator's ground truth.

Two models, both piecewise constant in time so the engine can compute the
next completion analytically:

- `RigidWork` for plain trace jobs (Philly, Gavel, generic CSV, synthetic):
  the work is `duration` seconds at the requested device count; the rate is
  n / requested, less `cross_node_penalty` when the allocation spans more
  nodes than the fewest that could hold it (so placement matters).
- `ProfileWork` for Pollux application jobs: progress per second from the
  application's measured profile (corral.sim.profiles), constant within an
  epoch. A rigid run uses the batch size of the trace; an elastic job given
  another device count picks the best batch for it, as AdaptDL jobs do.
  It also stands in for the job's reports to the scheduler: the engine asks
  it for the GoodputModel fitted from the step times the job has run
  (`throughput_model`) and for AdaptDL's exploration limit (`max_gpus_now`).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Protocol

from corral.goodput import GoodputModel, ThroughputParams, fit_throughput
from corral.sched.types import Allocation, ClusterView
from corral.sim.profiles import BatchConfig
from corral.sim.tracejob import TraceJob


class WorkModel(Protocol):
    """Progress of one job: `total` units of work, delivered at `rate(...)` units per second."""

    total: float
    ideal_duration: float  # seconds alone on the requested devices, packed, no restart

    def rate(self, alloc: Allocation, done: float) -> tuple[float, float]:
        """(units per second under `alloc` at progress `done`, progress up to which that rate holds)."""
        ...


class ReportingWork(WorkModel, Protocol):
    """A WorkModel that also stands in for the job's reports: its fitted model and exploration limit."""

    def throughput_model(self, alloc: Allocation, done: float) -> GoodputModel | None:
        """The GoodputModel fitted from the step times run so far under `alloc` at progress `done`."""
        ...

    def max_gpus_now(self) -> int:
        """The most devices the job may be given now (AdaptDL's exploration limit)."""
        ...


class Packing:
    """The packed placement of n devices on a cluster: fill the largest nodes first."""

    def __init__(self, cluster: ClusterView) -> None:
        self.sizes = sorted((n.num_devices for n in cluster.nodes), reverse=True) or [1]
        self._cache: dict[int, tuple[int, ...]] = {}

    def placement(self, n: int) -> tuple[int, ...]:
        """Devices per node when n devices are packed onto as few nodes as possible."""
        got = self._cache.get(n)
        if got is None:
            out, left = [], n
            for size in self.sizes:
                if left <= 0:
                    break
                out.append(min(size, left))
                left -= out[-1]
            while left > 0:  # more than the cluster holds: imagine more of the largest nodes
                out.append(min(self.sizes[0], left))
                left -= out[-1]
            got = self._cache[n] = tuple(out)
        return got

    def min_nodes(self, n: int) -> int:
        """The fewest nodes that can hold n devices."""
        return len(self.placement(n))


class RigidWork:
    """A plain trace job: `duration` seconds at `requested` devices, linear in devices, slower spread out."""

    __slots__ = ("total", "ideal_duration", "requested", "penalty", "packing")

    def __init__(self, duration: float, requested: int, penalty: float, packing: Packing) -> None:
        self.total = self.ideal_duration = float(duration)
        self.requested = requested
        self.penalty = penalty
        self.packing = packing

    def rate(self, alloc: Allocation, done: float) -> tuple[float, float]:
        """Speed n/requested, times (1 - penalty) when spread over more nodes than needed."""
        n = alloc.num_devices
        speed = n / self.requested
        if alloc.num_nodes > self.packing.min_nodes(n):
            speed *= 1.0 - self.penalty
        return speed, self.total


class ProfileWork:
    """A Pollux application job: progress from the measured profile, per epoch."""

    def __init__(self, job: TraceJob, packing: Packing) -> None:
        assert job.profile is not None
        self.app = job.profile
        self.job = job
        self.total = self.app.target_progress
        self.elastic = job.min_gpus < job.max_gpus
        self._cache: dict[tuple[tuple[int, ...], int], tuple[float, BatchConfig]] = {}
        self._observed: dict[tuple[int, int, int], float] = {}  # (nodes, replicas, local batch) -> step time
        self._params: ThroughputParams | None = None
        self._models: dict[tuple[int, int], GoodputModel] = {}
        self._state = (job.batch_size or self.app.init_batch_size, 0)
        self.ideal_duration = self._time_to_finish(packing.placement(job.gpus))

    def throughput_model(self, alloc: Allocation, done: float) -> GoodputModel | None:
        """The GoodputModel a scheduler would have fitted from what the job has run so far.

        Called at each round while the job runs: the step time of the current
        configuration is "reported" (as AdaptDL jobs report theirs), the
        throughput parameters are refitted when a new configuration appears, and
        the noise scale follows the current epoch's gradient statistics.
        """
        if alloc:
            placement = alloc.per_node()
            epoch = self.app.epoch_of(done)
            cfg = self.config(placement, epoch)
            key = (len(placement), sum(placement), cfg.atomic_bsz)
            if key not in self._observed:
                self._observed[key] = self.app.step_time(placement, cfg.atomic_bsz)[0]
                self._params = None
            self._state = (cfg.batch_size, epoch)
        if not self._observed:
            return None
        if self._params is None:
            self._params = _fit(tuple(sorted((*k, t) for k, t in self._observed.items())))
            self._models.clear()
        model = self._models.get(self._state)
        if model is None:
            sqr, var = self.app.grad_stats(*self._state)
            # Pollux's gradient noise scale in samples: efficiency (phi + M0) / (phi + M)
            # equals the artifact's gain / scale with phi = M0 * var / sqr.
            phi = max(0.0, self.app.init_batch_size * var / sqr) if sqr > 0 else 0.0
            model = self._models[self._state] = GoodputModel(
                params=self._params,
                init_batch=float(self.app.init_batch_size),
                max_batch=float(self.app.max_batch_size),
                noise_scale=phi,
                max_local_batch=float(self.app.max_local_bsz),
            )
        return model

    def max_gpus_now(self) -> int:
        """Devices the job may be given now: up to twice the most it has run on (AdaptDL's exploration limit).

        Never below the requested count, so rigid policies are unaffected.
        """
        seen = max((k[1] for k in self._observed), default=0)
        return max(self.job.gpus, min(self.job.max_gpus, max(2 * seen, 1)))

    def config(self, placement: tuple[int, ...], epoch: int) -> BatchConfig:
        """The batch configuration the job runs with on `placement` in `epoch`."""
        return self._goodput(placement, epoch)[1]

    def rate(self, alloc: Allocation, done: float) -> tuple[float, float]:
        """Goodput on the allocation's placement in the current epoch; holds until the epoch ends."""
        epoch = self.app.epoch_of(done)
        g, _ = self._goodput(alloc.per_node(), epoch)
        return g, min(float(self.app.boundaries[epoch + 1]), self.total)

    def _goodput(self, placement: tuple[int, ...], epoch: int) -> tuple[float, BatchConfig]:
        key = (placement, epoch)
        got = self._cache.get(key)
        if got is None:
            n = sum(placement)
            if self.elastic and n != self.job.gpus or self.job.batch_size is None:
                cfg = self.app.best_config(placement, epoch)
            else:
                cfg = self.app.batch_config(self.job.batch_size, n)
            got = self._cache[key] = (self.app.goodput(placement, cfg, epoch), cfg)
        return got

    def _time_to_finish(self, placement: tuple[int, ...]) -> float:
        t, done = 0.0, 0.0
        for epoch in range(self.app.max_epochs):
            end = float(self.app.boundaries[epoch + 1])
            t += (end - done) / self._goodput(placement, epoch)[0]
            done = end
        return t


@lru_cache(maxsize=4096)
def _fit(observations: tuple[tuple[float, ...], ...]) -> ThroughputParams:
    # Jobs of one application that ran the same configurations report the same
    # step times, so their fits are shared (a least-squares fit is ~30 ms).
    return fit_throughput(observations)


def build_work(job: TraceJob, packing: Packing, cross_node_penalty: float) -> WorkModel:
    """The ground-truth work model of a trace job."""
    if job.profile is not None:
        return ProfileWork(job, packing)
    assert job.duration is not None
    return RigidWork(job.duration, job.gpus, cross_node_penalty, packing)
