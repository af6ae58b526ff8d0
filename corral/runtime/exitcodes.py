"""Exit codes with a meaning between a worker, the launcher and the service."""

from __future__ import annotations

# A worker that was asked to stop (SIGTERM) saved its checkpoint and exited
# cleanly: 75 is EX_TEMPFAIL in sysexits.h, "try again later".
PREEMPTED_EXIT_CODE = 75
