"""One rank of a gang on a Ray node: an actor that runs the job's entrypoint as a subprocess.

The actor is the rank's anchor on its node. It is named and detached, so a
restarted service finds it again; it keeps the rank's exit code, end time and
stop deadline until the service has recorded them, so no run's end is lost
with the service. The subprocess lives in a session of its own (a signal to
its group reaches the whole rank) and dies with the actor (PR_SET_PDEATHSIG),
so a killed actor never leaves a rank running.

Imported on every Ray node: only the standard library and Ray at import time.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    """In the child: a session of its own, and SIGKILL when the thread that forked it (the actor's) dies."""
    os.setsid()
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


class RankActor:
    """Runs one rank: `launch` starts it, `wait` returns how it ended, `signal` stops it, `read` its output."""

    def __init__(self, job_id: int, attempt: int, rank: int) -> None:
        self.job_id, self.attempt, self.rank = job_id, attempt, rank
        self.dir = tempfile.mkdtemp(prefix=f"corral-{job_id}-{attempt}-r{rank}-")
        self.log_path = os.path.join(self.dir, "output.log")
        self.error_file = os.path.join(self.dir, "error.json")
        self.proc: subprocess.Popen[bytes] | None = None
        self.code: int | None = None  # as a shell reports it: killed by signal N -> 128 + N
        self.ended_at: float | None = None
        self.launched = False
        self.stop_deadline: float | None = None  # wall clock, set by the first stop; kept for a new service
        self.start_error = ""
        self.done = threading.Event()

    # -- where it runs -------------------------------------------------------------

    def node(self) -> dict[str, Any]:
        """This actor's node id, address and the accelerators Ray gave it."""
        import ray

        return {
            "node_id": ray.get_runtime_context().get_node_id(),
            "ip": ray.util.get_node_ip_address(),
            "gpus": [str(g) for g in ray.get_gpu_ids()],
            "pid": os.getpid(),
        }

    def rendezvous(self) -> tuple[str, int]:
        """(address, free port) on this node: rank 0's store listens there."""
        import ray

        ip = ray.util.get_node_ip_address()
        with socket.socket() as s:
            s.bind((ip, 0))
            return ip, int(s.getsockname()[1])

    # -- the rank ------------------------------------------------------------------

    def launch(self, cmd: list[str], env: dict[str, str], cwd: str | None, master: tuple[str, int]) -> dict[str, Any]:
        """Start the rank with torchrun's variables (rendezvous at `master`); returns its pid."""
        if self.launched:
            return {"pid": self.proc.pid if self.proc else None}
        cmd = [sys.executable if c == "<python>" else c for c in cmd]
        full = dict(os.environ)
        full.update(env)
        full["MASTER_ADDR"], full["MASTER_PORT"] = master[0], str(master[1])
        full["TORCHELASTIC_ERROR_FILE"] = self.error_file
        where = self.node()
        full["CORRAL_RAY_NODE_ID"] = where["node_id"]  # where the rank really runs (tests check it)
        gpus = where["gpus"]
        if gpus:  # Ray's assignment; on a CPU-only cluster the service's slot id (in env) stands
            full["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
        started = threading.Event()

        def run() -> None:
            # The thread that forks is the child's "parent" for PDEATHSIG: it lives as long as the child.
            try:
                with open(self.log_path, "ab") as out:
                    self.proc = subprocess.Popen(
                        cmd,
                        env=full,
                        cwd=cwd or None,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        preexec_fn=_die_with_parent,
                    )
            except OSError as exc:
                self.start_error = f"cannot start {cmd[0]}: {exc.strerror or exc}"
                with open(self.log_path, "ab") as out:
                    out.write(f"{self.start_error}\n".encode())
                self._ended(127)
                started.set()
                return
            started.set()
            rc = self.proc.wait()
            self._ended(128 - rc if rc < 0 else rc)

        self.launched = True
        threading.Thread(target=run, name=f"rank-{self.rank}", daemon=True).start()
        started.wait()
        return {"pid": self.proc.pid if self.proc else None, "error": self.start_error}

    def _ended(self, code: int) -> None:
        self.code, self.ended_at = code, time.time()
        self.done.set()

    def wait(self) -> dict[str, Any]:
        """Block until the rank has ended; then its status."""
        self.done.wait()
        return self.status()

    def status(self) -> dict[str, Any]:
        """Exit code (None while it runs), end time, stop deadline, whether it was launched."""
        return {
            "rank": self.rank,
            "code": self.code,
            "ended_at": self.ended_at,
            "stop_deadline": self.stop_deadline,
            "launched": self.launched,
        }

    def signal(self, sig: int, deadline: float | None = None) -> None:
        """Send `sig` to the rank's process group; the first stop's `deadline` is kept."""
        if deadline is not None and self.stop_deadline is None:
            self.stop_deadline = deadline
        proc = self.proc
        if proc is None or self.code is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def read(self, offset: int, limit: int = 1 << 20) -> bytes:
        """The rank's output from byte `offset` (at most `limit` bytes)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read(limit)
        except OSError:
            return b""

    def error(self) -> str:
        """The error the rank recorded with torch's @record (TORCHELASTIC_ERROR_FILE), if any."""
        try:
            with open(self.error_file) as f:
                return f.read()
        except OSError:
            return ""

    def close(self) -> None:
        """Kill the rank if it still runs and remove its folder (the service has read everything)."""
        self.signal(signal.SIGKILL)
        shutil.rmtree(self.dir, ignore_errors=True)

    def ping(self) -> bool:
        """True: the actor answers (its node is alive)."""
        return True
