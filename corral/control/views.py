"""What the live scheduler shows a policy about a stored job: the simulator's JobView, from the store.

The fields mean what they mean in corral.sim: attained service in
device-seconds, run time, restarts = runs started after the first (resumes
after a preemption or a resize, restarts after a failure), a duration
estimate (the user's, else one inferred from progress), and a throughput
model fitted with corral.goodput from the step times the job reported
(None until its first report: the policy's default model stands in).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from corral.control.store import Job
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


def throughput_model(observations: Mapping[str, Any], max_gpus: int) -> GoodputModel | None:
    """The GoodputModel fitted from a job's step-time reports by configuration (None without any)."""
    rows = []
    for key, value in observations.items():
        try:
            nodes, replicas, local = (int(x) for x in key.split(","))
            rows.append((nodes, replicas, local, round(float(value[0]), 9)))
        except (TypeError, ValueError, IndexError):
            continue
    rows = [row for row in rows if 1 <= row[0] <= row[1] and row[2] > 0 and row[3] > 0]
    if not rows:
        return None
    try:
        return _model(tuple(sorted(rows)), max(1, max_gpus))
    except ValueError:  # reports the model cannot fit: the default model stands in
        return None


@lru_cache(maxsize=4096)
def _model(rows: tuple[tuple[int, int, int, float], ...], max_gpus: int) -> GoodputModel:
    params = _fit(tuple((float(n), float(r), float(b), t) for n, r, b, t in rows))
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
