"""Executors turn scheduling decisions into processes. The local one runs gangs on this machine.

The scheduler loop only calls this interface (start, stop, poll, adopt,
cluster), so a Ray executor (placement groups, one actor per rank) can
replace the local one without the loop knowing.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import psutil

from corral.sched.types import Allocation, ClusterView, Node

NODE = "local"


@dataclass(frozen=True)
class RunExit:
    """A run that ended: which job, which attempt, and its exit code."""

    job_id: int
    attempt: int
    exit_code: int


class Executor(Protocol):
    """What the scheduler loop needs from a place that runs jobs."""

    def cluster(self) -> ClusterView:
        """The nodes and devices this executor can hand out."""
        ...

    def start(self, job_id: int, attempt: int, argv: list[str], allocation: Allocation, *, env: dict[str, str],
              workdir: str | None) -> int:
        """Start one run of a job on `allocation`; return its process id."""
        ...

    def stop(self, job_id: int, grace: float) -> None:
        """Ask the run to stop (SIGTERM: checkpoint and exit), SIGKILL after `grace` seconds."""
        ...

    def poll(self) -> list[RunExit]:
        """Runs that ended since the last call."""
        ...

    def needs_attention(self) -> bool:
        """True when a run ended or a stop deadline passed (the loop runs a round at once then)."""
        ...

    def adopt(self, job_id: int, attempt: int, pid: int | None) -> bool:
        """After a restart of the service: keep watching a run that is still alive; False if it is gone."""
        ...


def default_devices() -> int:
    """CUDA devices when there are any, else one slot per two CPU cores (at least 2)."""
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.device_count()
    except ImportError:  # pragma: no cover
        pass
    return max(2, (os.cpu_count() or 2) // 2)


@dataclass
class _Run:
    job_id: int
    attempt: int
    pid: int
    proc: subprocess.Popen[bytes] | None  # None for a run adopted after a restart of the service
    kill_at: float | None = None  # second SIGTERM: the launcher SIGKILLs its workers
    hard_kill_at: float | None = None  # then SIGKILL whatever is left of the run's process group


class LocalExecutor:
    """Runs each job as `corral run` on this machine; devices are slots handed out by CUDA_VISIBLE_DEVICES."""

    def __init__(self, devices: int, home: Path) -> None:
        self.devices = devices
        self.home = Path(home)
        self.runs: dict[int, _Run] = {}

    def job_dir(self, job_id: int) -> Path:
        """Where a job's logs, checkpoints and exit files live."""
        return self.home / "jobs" / str(job_id)

    def log_dir(self, job_id: int) -> Path:
        """Per-rank logs of a job (appended across runs)."""
        return self.job_dir(job_id) / "logs"

    def checkpoint_dir(self, job_id: int) -> Path:
        """The CORRAL_CHECKPOINT_DIR of a job: kept across preemptions, so it resumes."""
        return self.job_dir(job_id) / "checkpoint"

    def _exit_file(self, job_id: int, attempt: int) -> Path:
        return self.job_dir(job_id) / f"attempt-{attempt}.exit"

    def cluster(self) -> ClusterView:
        return ClusterView((Node(NODE, self.devices, {"type": "gpu"}),))

    def start(self, job_id: int, attempt: int, argv: list[str], allocation: Allocation, *, env: dict[str, str],
              workdir: str | None) -> int:
        devices = [d for _, d in allocation.devices()]
        script, args = (argv[1], argv[2:]) if Path(argv[0]).name.startswith("python") and len(argv) > 1 \
            else (argv[0], argv[1:])
        jd = self.job_dir(job_id)
        self.log_dir(job_id).mkdir(parents=True, exist_ok=True)
        self._exit_file(job_id, attempt).unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "corral.control.runner", str(self._exit_file(job_id, attempt)), "--",
               "--nproc", str(len(devices)), "--log-dir", str(self.log_dir(job_id)), script, *args]
        full_env = dict(os.environ)
        full_env.update(env)
        full_env.update({
            "CUDA_VISIBLE_DEVICES": ",".join(str(d) for d in devices),
            "CORRAL_CHECKPOINT_DIR": str(self.checkpoint_dir(job_id)),
            "CORRAL_JOB_ID": str(job_id),
            "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "1"),
        })
        with open(jd / "launcher.log", "ab") as out:
            out.write(f"--- run {attempt} on devices {devices}: {shlex.join(argv)}\n".encode())
            out.flush()
            # A session of its own: the run outlives a crash of the service, and
            # a signal to its process group reaches the launcher and nothing else.
            proc = subprocess.Popen(cmd, cwd=workdir or None, env=full_env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        self.runs[job_id] = _Run(job_id, attempt, proc.pid, proc)
        return proc.pid

    def stop(self, job_id: int, grace: float) -> None:
        run = self.runs.get(job_id)
        if run is None:
            return
        if run.kill_at is None and run.hard_kill_at is None:
            run.kill_at = time.monotonic() + grace
            _signal(run.pid, signal.SIGTERM)

    def _alive(self, run: _Run) -> bool:
        if run.proc is not None:
            return run.proc.poll() is None
        try:
            proc = psutil.Process(run.pid)
            # A zombie has ended; a process whose command line does not name this
            # job's exit file is another process that reused the pid.
            if proc.status() == psutil.STATUS_ZOMBIE or str(self._exit_file(run.job_id, run.attempt)) not in proc.cmdline():
                return False
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return False
        return not self._exit_file(run.job_id, run.attempt).exists()

    def poll(self) -> list[RunExit]:
        ended = []
        now = time.monotonic()
        for job_id, run in list(self.runs.items()):
            if self._alive(run):
                if run.kill_at is not None and now >= run.kill_at:
                    # Workers live in sessions of their own: only the launcher can reach
                    # them all, and a second SIGTERM tells it to SIGKILL them.
                    _signal(run.pid, signal.SIGTERM)
                    run.kill_at, run.hard_kill_at = None, now + 2.0
                elif run.hard_kill_at is not None and now >= run.hard_kill_at:
                    _signal(run.pid, signal.SIGKILL, group=True)
                continue
            ended.append(RunExit(job_id, run.attempt, self._read_exit(run)))
            del self.runs[job_id]
        return ended

    def _read_exit(self, run: _Run) -> int:
        f = self._exit_file(run.job_id, run.attempt)
        if f.exists():
            try:
                return int(f.read_text().strip())
            except ValueError:
                pass
        if run.proc is not None and run.proc.returncode is not None:
            rc = run.proc.returncode
            return 128 - rc if rc < 0 else rc
        return 137  # gone without a word: killed

    def needs_attention(self) -> bool:
        """True when a run ended or a kill deadline passed, so a round should run now."""
        now = time.monotonic()
        for run in list(self.runs.values()):
            if run.kill_at is not None and now >= run.kill_at or run.hard_kill_at is not None and now >= run.hard_kill_at:
                return True
            if not self._alive(run):
                return True
        return False

    def adopt(self, job_id: int, attempt: int, pid: int | None) -> bool:
        exit_file = self._exit_file(job_id, attempt)
        if pid is None:
            return False
        run = _Run(job_id, attempt, pid, None)
        if self._alive(run) or exit_file.exists():
            self.runs[job_id] = run  # poll() reports it when its exit file appears
            return True
        return False

    def running(self) -> list[int]:
        """Job ids with a run in progress."""
        return list(self.runs)


def _signal(pid: int, sig: int, *, group: bool = False) -> None:
    """Send `sig` to a run's launcher (SIGTERM: it forwards to the workers) or to its whole group."""
    try:
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
