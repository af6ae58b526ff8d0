"""What a simulation run is configured with and what it returns (plain values)."""

from __future__ import annotations

import enum
from array import array
from dataclasses import dataclass, field

from corral.sched.plan import InvalidDecision  # re-exported: the one definition lives beside validate()

__all__ = ["InvalidDecision", "JobResult", "JobStatus", "SimConfig", "SimProgress", "SimResult"]


class JobStatus(enum.Enum):
    """How a job's simulation ended."""

    FINISHED = "finished"
    UNFINISHED = "unfinished"  # still active when the run stopped (stalled or max_time)
    UNSCHEDULABLE = "unschedulable"  # min_gpus exceeds the cluster: never shown to the policy


@dataclass(frozen=True)
class SimConfig:
    """Knobs of a simulation run (defaults match the Pollux artifact's 60 s round and 30 s restart)."""

    round_s: float = 60.0
    restart_overhead_s: float = 30.0
    event_rounds: bool = True  # a round right after each arrival or completion
    start_overhead: bool = False  # charge the restart overhead on a job's first start too
    cross_node_penalty: float = 0.2  # slowdown of a plain job spread over more nodes than needed
    stall_rounds: int = 1000  # stop when this many rounds in a row ran nothing and nothing can arrive
    max_time: float | None = None  # stop at this simulated time (jobs left are unfinished)

    def __post_init__(self) -> None:
        if not self.round_s > 0:
            raise ValueError(f"round_s must be > 0, got {self.round_s}")
        if self.restart_overhead_s < 0:
            raise ValueError(f"restart_overhead_s must be >= 0, got {self.restart_overhead_s}")
        if not 0 <= self.cross_node_penalty < 1:
            raise ValueError(f"cross_node_penalty must be in [0, 1), got {self.cross_node_penalty}")


@dataclass(frozen=True, slots=True)
class JobResult:
    """What happened to one job."""

    id: str
    user: str
    priority: int
    submit_time: float
    gpus: int
    min_gpus: int
    max_gpus: int
    ideal_duration: float  # seconds alone on the requested devices, packed, never restarted
    status: JobStatus
    first_start: float | None
    finish_time: float | None
    attained_service: float  # device-seconds held (restart overhead included)
    run_time: float  # seconds holding any devices
    restarts: int
    preemptions: int

    @property
    def jct(self) -> float | None:
        """Job completion time: finish - submit (None when not finished)."""
        return None if self.finish_time is None else self.finish_time - self.submit_time

    @property
    def queueing_delay(self) -> float | None:
        """Submit to first start (None when it never started)."""
        return None if self.first_start is None else self.first_start - self.submit_time


@dataclass(frozen=True)
class SimResult:
    """A finished simulation: per-job results, step-function time series and run statistics."""

    policy: str
    capacity: int  # devices in the cluster
    config: SimConfig
    jobs: tuple[JobResult, ...]
    # Step functions sampled whenever they change: value holds from times[i] to times[i + 1].
    times: array = field(repr=False)
    used: array = field(repr=False)  # devices allocated
    queued: array = field(repr=False)  # active jobs holding no devices
    active: array = field(repr=False)  # jobs submitted and not finished (pending or running)
    end_time: float = 0.0
    rounds: int = 0
    events: int = 0
    wall_s: float = 0.0
    stopped: str = "done"  # done | stalled | max_time


@dataclass(frozen=True)
class SimProgress:
    """Where a running simulation is, for progress bars."""

    now: float
    finished: int
    total: int
