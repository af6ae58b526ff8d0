"""The local executor: each run is `corral run` in a session of its own on this machine.

Devices are slots handed out through CUDA_VISIBLE_DEVICES. A run outlives a
crash of the service; what the service must know to pick it up again is kept
in files of the run's own (its pid, the stop deadline once asked to stop, the
exit code), so a restarted service adopts it with its kill deadline intact.
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

import psutil

from corral.control.executors.base import Ending, RunHandle, RunOutcome
from corral.control.executors.logs import HomeLogs
from corral.runtime import env as runtime_env
from corral.runtime.launch import entrypoint_args
from corral.sched.types import Allocation, ClusterView, Node

NODE = "local"
ESCALATE_S = 2.0  # after the second SIGTERM (the launcher SIGKILLs its workers), SIGKILL the run's group


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
    handle: RunHandle
    pid: int
    proc: subprocess.Popen[bytes] | None  # None for a run adopted after a restart of the service
    kill_at: float | None = None  # wall clock: second SIGTERM, the launcher SIGKILLs its workers
    hard_kill_at: float | None = None  # then SIGKILL whatever is left of the run's process group
    forced: bool = False  # the executor escalated: the run did not stop within its grace
    outcome: RunOutcome | None = None  # set once it ended, until released


class LocalExecutor(HomeLogs):
    """Runs each job as `corral run` on this machine; devices are slots handed out by CUDA_VISIBLE_DEVICES."""

    name = "local"

    def __init__(self, devices: int, home: Path) -> None:
        self.devices = devices
        self.home = Path(home)
        self.runs: dict[int, _Run] = {}

    # -- where things live ---------------------------------------------------------

    def checkpoint_dir(self, job_id: int) -> Path:
        """The CORRAL_CHECKPOINT_DIR of a job: kept across preemptions, so it resumes."""
        return self.job_dir(job_id) / "checkpoint"

    def checkpoint_location(self, job_id: int) -> str:
        """Where a job's checkpoints live (a local folder)."""
        return str(self.checkpoint_dir(job_id))

    def _file(self, job_id: int, attempt: int, kind: str) -> Path:
        return self.job_dir(job_id) / f"attempt-{attempt}.{kind}"

    # -- the interface ---------------------------------------------------------------

    def cluster(self) -> ClusterView:
        """One node, "local", with `devices` slots."""
        return ClusterView((Node(NODE, self.devices, {"type": "gpu"}),))

    def start(
        self,
        job_id: int,
        attempt: int,
        argv: list[str],
        allocation: Allocation,
        *,
        env: dict[str, str],
        workdir: str | None,
    ) -> RunHandle:
        """Start `corral run --nproc N` of the job's entrypoint on the allocation's slots."""
        devices = [d for _, d in allocation.devices()]
        run_args = entrypoint_args(argv)  # python x.py / python -u x.py / python -m pkg.mod / an executable
        jd = self.job_dir(job_id)
        self.log_dir(job_id).mkdir(parents=True, exist_ok=True)
        for kind in ("exit", "stop", "pid"):
            self._file(job_id, attempt, kind).unlink(missing_ok=True)
        exit_file = self._file(job_id, attempt, "exit")
        cmd = [
            sys.executable,
            "-m",
            "corral.control.runner",
            str(exit_file),
            "--",
            "--nproc",
            str(len(devices)),
            "--log-dir",
            str(self.log_dir(job_id)),
            *run_args,
        ]
        full_env = dict(os.environ)
        full_env.update(env)
        full_env.update(
            {
                "CUDA_VISIBLE_DEVICES": ",".join(str(d) for d in devices),
                "CORRAL_CHECKPOINT_DIR": str(self.checkpoint_dir(job_id)),
                "CORRAL_JOB_ID": str(job_id),
                "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "1"),
            }
        )
        with open(jd / "launcher.log", "ab") as out:
            out.write(f"--- run {attempt} on devices {devices}: {shlex.join(argv)}\n".encode())
            out.flush()
            # A session of its own: the run outlives a crash of the service, and
            # a signal to its process group reaches the launcher and nothing else.
            proc = subprocess.Popen(
                cmd,
                cwd=workdir or None,
                env=full_env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        _write(self._file(job_id, attempt, "pid"), str(proc.pid))
        handle = RunHandle(job_id, attempt, str(proc.pid))
        self.runs[job_id] = _Run(handle, proc.pid, proc)
        return handle

    def stop(self, handle: RunHandle, grace: float) -> None:
        """SIGTERM the launcher once (it forwards to every rank); kill after `grace`. Idempotent."""
        run = self._run(handle)
        if run is None or run.outcome is not None:
            return
        if run.kill_at is not None or run.hard_kill_at is not None:
            return
        stop_file = self._file(handle.job_id, handle.attempt, "stop")
        deadline = _read_float(stop_file)
        if deadline is None:
            # The deadline is the run's, on disk: a service restarted in between keeps it.
            deadline = time.time() + grace
            _write(stop_file, repr(deadline))
            _signal(run.pid, signal.SIGTERM)
        run.kill_at = deadline

    def poll(self) -> list[RunOutcome]:
        """Runs that ended (reported until released); escalates stops whose grace ran out."""
        ended = []
        now = time.time()
        for run in list(self.runs.values()):
            if run.outcome is None:
                if self._alive(run):
                    self._escalate(run, now)
                    continue
                run.outcome = self._outcome(run)
            ended.append(run.outcome)
        return ended

    def release(self, handle: RunHandle) -> None:
        """Forget a run whose end the service has recorded."""
        run = self.runs.get(handle.job_id)
        if run is not None and run.handle.attempt == handle.attempt:
            del self.runs[handle.job_id]

    def needs_attention(self) -> bool:
        """True when a run ended or a kill deadline passed, so a round should run now."""
        now = time.time()
        for run in list(self.runs.values()):
            if run.outcome is not None:
                return True
            if (run.kill_at is not None and now >= run.kill_at) or (
                run.hard_kill_at is not None and now >= run.hard_kill_at
            ):
                return True
            if not self._alive(run):
                return True
        return False

    def adopt(self, handle: RunHandle) -> bool:
        """Watch a run started by an earlier service: True while it lives or left its exit code."""
        try:
            pid = int(handle.ref)
        except ValueError:
            return False
        run = _Run(handle, pid, None)
        exit_file = self._file(handle.job_id, handle.attempt, "exit")
        if not (self._alive(run) or exit_file.exists()):
            return False
        run.kill_at = _read_float(self._file(handle.job_id, handle.attempt, "stop"))
        self.runs[handle.job_id] = run
        return True

    def find(self, job_id: int, attempt: int) -> RunHandle | None:
        """The run of (job, attempt) from its pid file, if it was started."""
        pid = _read_float(self._file(job_id, attempt, "pid"))
        if pid is None:
            return None
        handle = RunHandle(job_id, attempt, str(int(pid)))
        return handle if self.adopt(handle) else None

    def running(self) -> list[int]:
        """Job ids with a run in progress."""
        return [j for j, r in self.runs.items() if r.outcome is None]

    def pids(self) -> list[int]:
        """Launcher pids of the runs this executor watches (for cleanup by its owner)."""
        return [r.pid for r in self.runs.values()]

    # -- internals ---------------------------------------------------------------------

    def _run(self, handle: RunHandle) -> _Run | None:
        run = self.runs.get(handle.job_id)
        return run if run is not None and run.handle.attempt == handle.attempt else None

    def _escalate(self, run: _Run, now: float) -> None:
        if run.kill_at is not None and now >= run.kill_at:
            # Workers live in sessions of their own: only the launcher can reach
            # them all, and a second SIGTERM tells it to SIGKILL them.
            _signal(run.pid, signal.SIGTERM)
            run.kill_at, run.hard_kill_at, run.forced = None, now + ESCALATE_S, True
        elif run.hard_kill_at is not None and now >= run.hard_kill_at:
            _signal(run.pid, signal.SIGKILL, group=True)

    def _alive(self, run: _Run) -> bool:
        exit_file = self._file(run.handle.job_id, run.handle.attempt, "exit")
        if run.proc is not None:
            return run.proc.poll() is None
        try:
            proc = psutil.Process(run.pid)
            # A zombie has ended; a process whose command line does not name this
            # run's exit file is another process that reused the pid.
            if proc.status() == psutil.STATUS_ZOMBIE or str(exit_file) not in proc.cmdline():
                return False
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return False
        return not exit_file.exists()

    def _outcome(self, run: _Run) -> RunOutcome:
        code: int | None = None
        text = _read_text(self._file(run.handle.job_id, run.handle.attempt, "exit"))
        if text is not None:
            try:
                code = int(text)
            except ValueError:
                code = None
        if code is None and run.proc is not None and run.proc.returncode is not None:
            rc = run.proc.returncode
            code = 128 - rc if rc < 0 else rc
        if code is None:
            return RunOutcome(run.handle, Ending.LOST, None, "the run ended without recording an exit code")
        if code == 0:
            return RunOutcome(run.handle, Ending.SUCCEEDED, 0)
        if code == runtime_env.PREEMPTED_EXIT_CODE:
            return RunOutcome(run.handle, Ending.PREEMPTED, code)
        if run.forced:
            return RunOutcome(run.handle, Ending.KILLED, code, "killed after the stop grace ran out")
        if code == 128 + signal.SIGTERM and self._file(run.handle.job_id, run.handle.attempt, "stop").exists():
            # Stopped before it could checkpoint (still starting, or a plain torchrun script): our SIGTERM ended it.
            return RunOutcome(run.handle, Ending.KILLED, code, "ended by the stop's SIGTERM, no checkpoint saved")
        return RunOutcome(run.handle, Ending.FAILED, code)


def _write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text + "\n")
    os.replace(tmp, path)


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _read_float(path: Path) -> float | None:
    text = _read_text(path)
    try:
        return float(text) if text else None
    except ValueError:
        return None


def _signal(pid: int, sig: int, *, group: bool = False) -> None:
    """Send `sig` to a run's launcher (SIGTERM: it forwards to the workers) or to its whole group."""
    try:
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
