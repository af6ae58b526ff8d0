"""Executors by name: the service selects one from its config (`corral server --executor NAME`).

>>> from corral.control import executors
>>> executors.available()
['local', 'ray']
"""

from __future__ import annotations

from pathlib import Path

from corral.control.executors.base import Ending, Executor, RunHandle, RunOutcome
from corral.errors import UserError

_NAMES = ("local", "ray")


def available() -> list[str]:
    """Names of the executors a service can run on."""
    return list(_NAMES)


def create(
    name: str,
    *,
    home: Path,
    devices: int | None = None,
    ray_address: str = "auto",
    checkpoint_root: Path | None = None,
    placement_timeout: float = 30.0,
) -> Executor:
    """A new executor by name; UserError names the choices for an unknown one."""
    if name == "local":
        from corral.control.executors.local import LocalExecutor, default_devices

        return LocalExecutor(devices or default_devices(), home)
    if name == "ray":
        from corral.control.executors.ray_executor import RayExecutor

        return RayExecutor(
            home, address=ray_address, checkpoint_root=checkpoint_root, placement_timeout=placement_timeout
        )
    raise UserError(f"unknown executor {name!r}; choose one of: {', '.join(available())}")


__all__ = ["Ending", "Executor", "RunHandle", "RunOutcome", "available", "create"]
