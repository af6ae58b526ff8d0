"""The policy registry: the CLI, the server config and the simulator select policies by name here.

>>> from corral.sched import policies
>>> policies.available()
['fairshare', 'fifo', 'fifo-backfill', 'pollux', 'priority', 'srtf', 'themis', 'tiresias']
>>> policies.get("tiresias", thresholds=[600, 6000]).name
'tiresias'
"""

from __future__ import annotations

import inspect

from corral.errors import UserError
from corral.sched.policies._common import BasePolicy
from corral.sched.policies.backfill import BackfillPolicy
from corral.sched.policies.fairshare import FairSharePolicy
from corral.sched.policies.fifo import FifoPolicy
from corral.sched.policies.pollux import PolluxPolicy
from corral.sched.policies.priority import PriorityPolicy
from corral.sched.policies.srtf import SrtfPolicy
from corral.sched.policies.themis import ThemisPolicy
from corral.sched.policies.tiresias import TiresiasPolicy

_POLICIES: dict[str, type[BasePolicy]] = {
    cls.name: cls
    for cls in (
        FifoPolicy,
        BackfillPolicy,
        PriorityPolicy,
        SrtfPolicy,
        TiresiasPolicy,
        ThemisPolicy,
        PolluxPolicy,
        FairSharePolicy,
    )
}


def available() -> list[str]:
    """Names of the registered policies, sorted."""
    return sorted(_POLICIES)


def options(name: str) -> list[str]:
    """The keyword options policy `name` accepts."""
    return list(inspect.signature(_lookup(name)).parameters)


def get(name: str, **opts: object) -> BasePolicy:
    """A new policy instance by name, configured by keyword options; UserError on an unknown name or option."""
    cls = _lookup(name)
    known = options(name)
    unknown = sorted(set(opts) - set(known))
    if unknown:
        raise UserError(
            f"policy {cls.name!r} has no option {', '.join(map(repr, unknown))}; its options: {', '.join(known)}"
        )
    try:
        return cls(**opts)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise UserError(f"policy {cls.name!r}: {exc}") from None


def _lookup(name: str) -> type[BasePolicy]:
    cls = _POLICIES.get(name.strip().lower()) if isinstance(name, str) else None
    if cls is None:
        raise UserError(f"unknown policy {name!r}; choose one of: {', '.join(available())}")
    return cls


__all__ = [
    "BackfillPolicy",
    "BasePolicy",
    "FairSharePolicy",
    "FifoPolicy",
    "PolluxPolicy",
    "PriorityPolicy",
    "SrtfPolicy",
    "ThemisPolicy",
    "TiresiasPolicy",
    "available",
    "get",
    "options",
]
