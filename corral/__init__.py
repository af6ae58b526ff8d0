"""corral: schedule and run distributed training jobs.

`corral.init(...)` is the Job API a training script opts into; it is loaded
lazily so that `import corral` (and the CLI) does not pay for importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from corral.runtime.exitcodes import PREEMPTED_EXIT_CODE  # re-exported; defined in the runtime

__version__ = "0.1.0"
__all__ = ["PREEMPTED_EXIT_CODE", "Job", "init"]

if TYPE_CHECKING:  # pragma: no cover
    from corral.runtime.job import Job, init


def __getattr__(name: str) -> Any:
    if name in ("init", "Job"):
        from corral.runtime import job

        return getattr(job, name)
    raise AttributeError(f"module 'corral' has no attribute {name!r}")
