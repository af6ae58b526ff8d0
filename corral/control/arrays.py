"""Job arrays and dependencies: what a spec's `array:` expands to, and when `depends_on` lets a job run.

Pure functions, no I/O: the service expands an array at submit and asks, each
round, whether a waiting job's dependencies are met (like Slurm's `--array`
and `--dependency=afterok|afterany`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from enum import Enum

MAX_ARRAY = 1000  # elements one array submit may create (Slurm's MaxArraySize defaults to 1001)
MAX_DEPENDENCIES = 64

# "0-9", "1,3,8", "0-99:10": ranges with an optional step, comma separated.
_PART = re.compile(r"^(\d{1,6})(?:-(\d{1,6})(?::(\d{1,6}))?)?$")


def parse_range(text: str) -> list[int]:
    """The indices of an array range like "0-9", "1,3,8" or "0-99:10", ascending and distinct."""
    indices: set[int] = set()
    for part in text.replace(" ", "").split(","):
        m = _PART.match(part)
        if m is None:
            raise ValueError(f"{part!r} is not an index or a range like 0-9 or 0-99:10")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        step = int(m.group(3)) if m.group(3) is not None else 1
        if hi < lo:
            raise ValueError(f"range {part!r} ends before it starts")
        if step < 1:
            raise ValueError(f"range {part!r} has step 0")
        if (hi - lo) // step + 1 + len(indices) > MAX_ARRAY:
            raise ValueError(f"an array has at most {MAX_ARRAY} elements")
        indices.update(range(lo, hi + 1, step))
    if not indices:
        raise ValueError("an array needs at least one index")
    return sorted(indices)


def value_text(value: object) -> str:
    """A value as CORRAL_ARRAY_VALUE carries it: strings as they are, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def elements(array: str | Sequence[object]) -> list[tuple[int, str]]:
    """(index, value) of each element: a range gives its indices (value = the index), a list its values."""
    if isinstance(array, str):
        return [(i, str(i)) for i in parse_range(array)]
    if not 1 <= len(array) <= MAX_ARRAY:
        raise ValueError(f"an array has 1 to {MAX_ARRAY} values, got {len(array)}")
    return [(i, value_text(v)) for i, v in enumerate(array)]


class Dependency(str, Enum):
    """Where a waiting job's dependencies stand."""

    READY = "ready"  # every dependency ended as required: the job may run
    WAITING = "waiting"  # some dependency has not ended yet
    NEVER = "never"  # some dependency ended in a way that can never satisfy it


def dependency_status(after: str, states: Iterable[str | None]) -> Dependency:
    """Whether dependencies in `states` (None: no such job) let a job run; after = "ok" or "any"."""
    waiting = False
    for state in states:
        if state is None:
            return Dependency.NEVER
        if state not in ("SUCCEEDED", "FAILED", "CANCELLED"):
            waiting = True
        elif after == "ok" and state != "SUCCEEDED":
            return Dependency.NEVER
    return Dependency.WAITING if waiting else Dependency.READY
