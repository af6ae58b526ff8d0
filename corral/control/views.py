"""What the live scheduler shows a policy about a stored job: the simulator's JobView, from the store.

The fields mean what they mean in corral.sim: attained service in
device-seconds, run time, restarts = runs started after the first (resumes
after a preemption or a resize, restarts after a failure), a duration
estimate (the user's, else one inferred from progress), and a throughput
model fitted with corral.goodput from the step times the job reported, with
the statistical efficiency of its reported noise scale when its batch is
adaptive (None until its first report: the policy's default model stands in).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from corral.control.store import EFFICIENCY_KEY, Job
from corral.goodput import GoodputModel, ThroughputParams, fit_throughput
from corral.sched.types import Allocation, JobView

MIN_PROGRESS = 0.02  # progress below this says little about the duration
# A job that reports no gradient statistics: every sample counts (efficiency 1),
# so its goodput is its throughput with the local batch it runs. A noise scale
# this large makes (phi + M0) / (phi + M) equal to 1 within 1e-6 for any batch.
EVERY_SAMPLE_COUNTS = 1e12


def job_view(job: Job, *, waiting: bool = False, pinned: bool = False) -> JobView:
    """The policy's view of `job`; `waiting`: shown without its devices; `pinned`: shown keeping them, unmovable."""
    spec = job.spec or {}
    holds = job.state in ("RUNNING", "RESTARTING") and not waiting
    alloc = Allocation.of(job.allocation or {}) if holds else Allocation()
    min_gpus, max_gpus, gpus = job.min_gpus, job.max_gpus, job.gpus
    if pinned and alloc:
        min_gpus = max_gpus = gpus = alloc.num_devices
    return JobView(
        id=str(job.id),
        user=job.user,
        priority=job.priority,
        submit_time=job.submit_time,
        min_gpus=min_gpus,
        max_gpus=max_gpus,
        gpus=gpus,
        attained_service=job.attained_service,
        progress=job.progress,
        duration_estimate=duration_estimate(spec, job.attained_service, job.progress, gpus or max_gpus),
        throughput=throughput_model(job.observations or {}, max_gpus),
        allocation=alloc,
        run_time=job.run_time,
        restarts=max(0, job.attempt - 1),
        preemptible=bool(spec.get("preemptible", True)) and not pinned,
    )


def duration_estimate(spec: Mapping[str, Any], attained: float, progress: float | None, requested: int) -> float | None:
    """Seconds the job needs alone at its request: the user's estimate, else attained time over progress."""
    given = spec.get("duration_estimate")
    if given is not None:
        return float(given)
    if progress is not None and progress >= MIN_PROGRESS and attained > 0:
        return attained / max(1, requested) / progress
    return None


def _rows(observations: Mapping[str, Any]) -> list[tuple[int, int, int, float]]:
    """(nodes, replicas, local batch, seconds per micro-step) of each configuration a job reported."""
    rows = []
    for key, value in observations.items():
        if key == EFFICIENCY_KEY:
            continue
        try:
            nodes, replicas, local = (int(x) for x in key.split(","))
            rows.append((nodes, replicas, local, round(float(value[0]), 9)))
        except (TypeError, ValueError, IndexError, AttributeError):
            continue
    return [row for row in rows if 1 <= row[0] <= row[1] and row[2] > 0 and row[3] > 0]


def _adaptive(observations: Mapping[str, Any]) -> tuple[float, float, float, float | None] | None:
    """(noise scale, initial batch, max batch, max local batch) of a job with an adaptive batch, else None."""
    stats = observations.get(EFFICIENCY_KEY)
    if not isinstance(stats, Mapping):
        return None
    try:
        phi, lo, hi = float(stats["noise_scale"]), float(stats["init_batch"]), float(stats["max_batch"])
        cap = stats.get("max_local_batch")
        cap = None if cap is None else float(cap)
    except (KeyError, TypeError, ValueError):
        return None
    if not (phi >= 0 and 0 < lo <= hi) or (cap is not None and cap <= 0):
        return None
    return phi, lo, hi, cap


def throughput_model(observations: Mapping[str, Any], max_gpus: int) -> GoodputModel | None:
    """The GoodputModel fitted from a job's reports (None without any step time).

    Throughput comes from the step times by configuration. A job with an adaptive batch
    also reports its noise scale and batch bounds: its model has Pollux's statistical
    efficiency, and the policy may pick its batch. A fixed-batch job ends after its epochs
    whatever its efficiency, so for it every sample counts (its goodput is its throughput).
    """
    rows = _rows(observations)
    if not rows:
        return None
    try:
        return _model(tuple(sorted(rows)), max(1, max_gpus), _adaptive(observations))
    except ValueError:  # reports the model cannot fit: the default model stands in
        return None


def model_description(observations: Mapping[str, Any], max_gpus: int) -> str:
    """What the scheduler knows of the job's scaling, in words (for `corral describe`)."""
    rows = _rows(observations)
    if not rows:
        return "default model: no step times reported yet"
    if throughput_model(observations, max_gpus) is None:
        return "default model: the reported step times could not be fitted"
    where = f"throughput fitted from {len(rows)} configuration{'s' if len(rows) > 1 else ''}"
    adaptive = _adaptive(observations)
    if adaptive is None:
        return f"{where}; fixed batch (every sample counts toward its epochs)"
    phi, lo, hi, _ = adaptive
    return f"{where}; efficiency from noise scale {phi:.3g}, adaptive batch {lo:g}..{hi:g}"


@lru_cache(maxsize=4096)
def _model(
    rows: tuple[tuple[int, int, int, float], ...],
    max_gpus: int,
    adaptive: tuple[float, float, float, float | None] | None,
) -> GoodputModel:
    params = _fit(tuple((float(n), float(r), float(b), t) for n, r, b, t in rows))
    if adaptive is not None:
        phi, lo, hi, cap = adaptive
        return GoodputModel(params=params, init_batch=lo, max_batch=hi, noise_scale=phi, max_local_batch=cap)
    local = float(min(b for _, _, b, _ in rows))
    return GoodputModel(
        params=params,
        init_batch=local,
        max_batch=local * max_gpus,
        noise_scale=EVERY_SAMPLE_COUNTS * local,
        max_local_batch=local,
    )


@lru_cache(maxsize=4096)
def _fit(rows: tuple[tuple[float, float, float, float], ...]) -> ThroughputParams:
    # A least-squares fit costs ~30 ms; a job's reports change its rows at most
    # a few times per configuration (store.OBSERVATIONS_KEPT), so fits are cached.
    return fit_throughput(rows)
