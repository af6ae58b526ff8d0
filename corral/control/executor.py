"""Moved to corral.control.executors (kept so that old imports work while code moves)."""

from corral.control.executors.base import Ending, Executor, RunHandle, RunOutcome
from corral.control.executors.local import NODE, LocalExecutor, default_devices

__all__ = ["NODE", "Ending", "Executor", "LocalExecutor", "RunHandle", "RunOutcome", "default_devices"]
