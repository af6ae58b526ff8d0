"""Job states, with their meaning attached (as Ray Train's controller states carry theirs)."""

from __future__ import annotations

from enum import Enum


class JobState(str, Enum):
    """Where a job is in its life: PENDING -> RUNNING -> SUCCEEDED | FAILED | CANCELLED."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    PREEMPTED = "PREEMPTED"  # stopped by the scheduler with a checkpoint; goes back to PENDING
    RESTARTING = "RESTARTING"  # failed with restarts left; starts again
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def is_terminal(self) -> bool:
        """The job will never run again."""
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)

    @property
    def holds_devices(self) -> bool:
        """The job's processes may be running on its allocation."""
        return self in (JobState.RUNNING, JobState.RESTARTING)

    @property
    def wants_devices(self) -> bool:
        """The scheduler should consider this job in its next round."""
        return self in (JobState.PENDING, JobState.RUNNING, JobState.RESTARTING)


# Allowed transitions; anything else is a bug in the caller.
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.PENDING: frozenset({JobState.RUNNING, JobState.CANCELLED, JobState.FAILED}),
    JobState.RUNNING: frozenset(
        {
            JobState.SUCCEEDED,
            JobState.FAILED,
            JobState.CANCELLED,
            JobState.PREEMPTED,
            JobState.RESTARTING,
            JobState.PENDING,
        }
    ),
    JobState.PREEMPTED: frozenset({JobState.PENDING, JobState.CANCELLED}),
    JobState.RESTARTING: frozenset({JobState.RUNNING, JobState.PENDING, JobState.FAILED, JobState.CANCELLED}),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}


def can_move(src: JobState, dst: JobState) -> bool:
    """True when a job may go from `src` to `dst`."""
    return dst in TRANSITIONS[src]


# The state names as the API and the store spell them, for code that works on
# API dicts (the CLI, the demo, the report): one list each, derived from JobState.
STATES: tuple[str, ...] = tuple(s.value for s in JobState)
TERMINAL: tuple[str, ...] = tuple(s.value for s in JobState if s.is_terminal)
ACTIVE: tuple[str, ...] = tuple(s.value for s in JobState if not s.is_terminal)
HOLDING: tuple[str, ...] = tuple(s.value for s in JobState if s.holds_devices)

# How the CLI and the demo colour a state (rich styles).
STATE_STYLE: dict[str, str] = {
    JobState.PENDING.value: "yellow",
    JobState.RUNNING.value: "green",
    JobState.PREEMPTED.value: "magenta",
    JobState.RESTARTING.value: "cyan",
    JobState.SUCCEEDED.value: "bold blue",
    JobState.FAILED.value: "bold red",
    JobState.CANCELLED.value: "dim",
}
