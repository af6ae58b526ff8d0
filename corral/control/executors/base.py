"""The executor seam: what the scheduler loop asks of a place that runs jobs.

The loop never sees pids, local paths or exit-code conventions: a run is an
opaque `RunHandle`, its end a typed `RunOutcome`, and logs and checkpoints are
reached through the executor. `local` (process gangs on this machine),
`fake` (a simulated clock, for tests) and later `ray` implement it.

Outcomes are *reported* by `poll()` until the loop `release()`s them after
it has committed what they mean to the store: a round that fails half-way
sees the same outcome again next round, so no run's end is ever lost.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from corral.sched.types import Allocation, ClusterView


@dataclass(frozen=True)
class RunHandle:
    """One run (attempt) of a job, as the executor names it; `ref` means something to that executor only."""

    job_id: int
    attempt: int
    ref: str = ""


class Ending(str, enum.Enum):
    """How a run ended, as the executor saw it (the loop adds what it had asked for)."""

    SUCCEEDED = "succeeded"  # exit code 0
    PREEMPTED = "preempted"  # the run saved a checkpoint and stopped when asked (exit 75)
    KILLED = "killed"  # the executor killed it after the stop grace ran out
    FAILED = "failed"  # it exited by itself with a non-zero code
    LOST = "lost"  # the executor lost it (node gone, process vanished without a word)
    UNPLACED = "unplaced"  # the executor could not place it in time (devices taken outside its view); never ran


@dataclass(frozen=True)
class RunOutcome:
    """The end of a run: which one, how, its exit code when it had one, and a line of detail."""

    handle: RunHandle
    ending: Ending
    exit_code: int | None = None
    detail: str = ""

    @property
    def job_id(self) -> int:
        """The job whose run ended."""
        return self.handle.job_id


@runtime_checkable
class Executor(Protocol):
    """What the scheduler loop needs from a place that runs jobs."""

    name: str

    def cluster(self) -> ClusterView:
        """The nodes and devices this executor can hand out now."""
        ...

    def start(
        self,
        job_id: int,
        attempt: int,
        argv: list[str],
        allocation: Allocation,
        *,
        env: dict[str, str],
        workdir: str | None,
    ) -> RunHandle:
        """Start one run of a job on `allocation`; raise on failure (nothing is left running then)."""
        ...

    def stop(self, handle: RunHandle, grace: float) -> None:
        """Ask the run to stop (checkpoint and exit); kill it once `grace` seconds have passed."""
        ...

    def poll(self) -> list[RunOutcome]:
        """Runs that ended and were not released yet (the same outcome again until `release`)."""
        ...

    def release(self, handle: RunHandle) -> None:
        """Forget a run whose outcome the loop has recorded."""
        ...

    def needs_attention(self) -> bool:
        """True when a run ended or a stop deadline passed (the loop runs a round at once then)."""
        ...

    def adopt(self, handle: RunHandle) -> bool:
        """After a restart of the service: watch a run again; False when it is gone without an outcome."""
        ...

    def running(self) -> list[int]:
        """Ids of the jobs with a run this executor watches that has not ended."""
        ...

    def find(self, job_id: int, attempt: int) -> RunHandle | None:
        """The handle of a run started but never recorded (the service died in between), if it exists."""
        ...

    def read_log(self, job_id: int, rank: int | None, offset: int = 0, limit: int = 1 << 20) -> bytes:
        """A job's output from byte `offset`: every rank prefixed (rank None) or one rank's."""
        ...

    def log_tail(self, job_id: int, lines: int = 5) -> str:
        """The last lines of a job's output (for the reason of a failure)."""
        ...

    def checkpoint_location(self, job_id: int) -> str:
        """Where a job's checkpoints live (kept across runs, so it resumes)."""
        ...
