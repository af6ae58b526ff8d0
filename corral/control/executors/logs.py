"""Where executors that keep job output in the service's home put it, and how it is read back.

Layout under HOME/jobs/N/: `launcher.log` (every rank, prefixed) and `logs/rank-R.log`.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path


class HomeLogs:
    """Job folders and logs under `self.home` (mixed into the local and Ray executors)."""

    home: Path

    def job_dir(self, job_id: int) -> Path:
        """Where a job's logs (and an executor's run files) live."""
        return self.home / "jobs" / str(job_id)

    def log_dir(self, job_id: int) -> Path:
        """Per-rank logs of a job (appended across runs)."""
        return self.job_dir(job_id) / "logs"

    def read_log(self, job_id: int, rank: int | None, offset: int = 0, limit: int = 1 << 20) -> bytes:
        """A job's output from byte `offset`: every rank prefixed (rank None) or one rank's."""
        path = self.job_dir(job_id) / "launcher.log" if rank is None else self.log_dir(job_id) / f"rank-{rank}.log"
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                return f.read(limit)
        except OSError:
            return b""

    def log_tail(self, job_id: int, lines: int = 5) -> str:
        """The last `lines` lines of the job's merged output."""
        try:
            with open(self.job_dir(job_id) / "launcher.log", "rb") as f:
                tail = deque(f, maxlen=lines)
        except OSError:
            return ""
        return b"".join(tail).decode(errors="replace").strip()
