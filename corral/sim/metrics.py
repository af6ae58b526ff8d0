"""Metrics of a simulation result: pure functions of a SimResult (no I/O).

- JCT (job completion time) = finish - submit, over finished jobs: mean, median, p99.
- makespan = end of the run - first submit.
- queueing delay = first start - submit, over jobs that started.
- utilisation = allocated device-seconds / (devices x makespan); restart
  overhead counts as allocated (the devices are held).
- finish-time fairness (Themis, Mahajan et al., NSDI'20): rho = JCT / T_id,
  where T_id is the job's run time on an independent 1/N share of the
  cluster, N the time-average number of active jobs while it was active:
  T_id = ideal x max(1, gpus x N / devices). rho <= 1 is fair; we report the
  maximum and the share of finished jobs with rho > 1.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from corral.sim.engine import JobStatus, SimResult


@dataclass(frozen=True)
class Metrics:
    """Summary numbers of one simulation (seconds unless named otherwise; None when undefined)."""

    policy: str
    jobs: int
    finished: int
    unfinished: int
    unschedulable: int
    avg_jct: float | None
    median_jct: float | None
    p99_jct: float | None
    makespan: float | None
    avg_queueing_delay: float | None
    utilisation: float | None  # fraction of device-seconds allocated, 0..1
    ftf_max: float | None  # largest finish-time fairness rho
    ftf_unfair_share: float | None  # fraction of finished jobs with rho > 1
    preemptions: int
    restarts: int

    def as_dict(self) -> dict[str, object]:
        """A JSON-friendly dict of every field."""
        return asdict(self)


def jcts(result: SimResult) -> np.ndarray:
    """JCTs of the finished jobs, in trace order (seconds)."""
    return np.array(
        [
            j.finish_time - j.submit_time
            for j in result.jobs
            if j.status is JobStatus.FINISHED and j.finish_time is not None
        ]
    )


def makespan(result: SimResult) -> float | None:
    """End of the run minus the first submit time of a schedulable job (None with no such job)."""
    submits = [j.submit_time for j in result.jobs if j.status is not JobStatus.UNSCHEDULABLE]
    return result.end_time - min(submits) if submits else None


def integral(times: np.ndarray, values: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Integral of the step function (times, values) from times[0] to each point of `at`."""
    if len(times) == 0:
        return np.zeros_like(at, dtype=float)
    cum = np.concatenate([[0.0], np.cumsum(values[:-1] * np.diff(times))])
    i = np.clip(np.searchsorted(times, at, side="right") - 1, 0, len(times) - 1)
    return cum[i] + values[i] * np.maximum(at - times[i], 0.0)


def finish_time_fairness(result: SimResult) -> np.ndarray:
    """Themis rho = JCT / (ideal time on a 1/N share of the cluster) per finished job, in trace order."""
    done = [j for j in result.jobs if j.status is JobStatus.FINISHED]
    if not done:
        return np.array([])
    times, active = np.asarray(result.times), np.asarray(result.active)
    start = np.array([j.submit_time for j in done])
    end = np.array([j.finish_time for j in done])
    span = end - start
    area = integral(times, active, end) - integral(times, active, start)
    at_start = active[np.clip(np.searchsorted(times, start, side="right") - 1, 0, max(len(times) - 1, 0))]
    contenders = np.where(span > 0, area / np.where(span > 0, span, 1.0), at_start)
    contenders = np.maximum(contenders, 1.0)
    gpus = np.array([j.gpus for j in done], dtype=float)
    ideal = np.array([j.ideal_duration for j in done])
    t_id = ideal * np.maximum(1.0, gpus * contenders / max(result.capacity, 1))
    return span / t_id


def compute_metrics(result: SimResult) -> Metrics:
    """Every summary metric of `result`."""
    jct = jcts(result)
    status = [j.status for j in result.jobs]
    delays = np.array([j.first_start - j.submit_time for j in result.jobs if j.first_start is not None])
    span = makespan(result)
    held = sum(j.attained_service for j in result.jobs)
    rho = finish_time_fairness(result)

    def stat(values: np.ndarray, fn) -> float | None:  # noqa: ANN001 - numpy reducer
        return float(fn(values)) if len(values) else None

    return Metrics(
        policy=result.policy,
        jobs=len(result.jobs),
        finished=status.count(JobStatus.FINISHED),
        unfinished=status.count(JobStatus.UNFINISHED),
        unschedulable=status.count(JobStatus.UNSCHEDULABLE),
        avg_jct=stat(jct, np.mean),
        median_jct=stat(jct, np.median),
        p99_jct=stat(jct, lambda v: np.percentile(v, 99)),
        makespan=span,
        avg_queueing_delay=stat(delays, np.mean),
        utilisation=held / (result.capacity * span) if span and result.capacity else None,
        ftf_max=stat(rho, np.max),
        ftf_unfair_share=stat(rho, lambda v: np.mean(v > 1.0)),
        preemptions=sum(j.preemptions for j in result.jobs),
        restarts=sum(j.restarts for j in result.jobs),
    )


def binned(result: SimResult, values: np.ndarray, points: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """Time-weighted average of a step series of `result` over `points` equal bins: (bin starts, means)."""
    times = np.asarray(result.times)
    if len(times) == 0:
        return np.array([]), np.array([])
    t0, t1 = float(times[0]), float(max(result.end_time, times[-1]))
    if t1 <= t0:
        return np.array([t0]), np.array([float(values[-1])])
    edges = np.linspace(t0, t1, points + 1)
    area = integral(times, np.asarray(values, dtype=float), edges)
    return edges[:-1], np.diff(area) / np.diff(edges)


def utilisation_series(result: SimResult, points: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """Fraction of devices allocated over time (bin starts in seconds, mean per bin)."""
    t, used = binned(result, np.asarray(result.used), points)
    return t, used / max(result.capacity, 1)


def queue_series(result: SimResult, points: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """Jobs waiting (active, holding no devices) over time (bin starts in seconds, mean per bin)."""
    return binned(result, np.asarray(result.queued), points)
