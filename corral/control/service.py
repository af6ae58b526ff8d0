"""The running service: store, executor and scheduler, with the loop thread that drives rounds.

The HTTP app (app.py) and `corral demo` both hold one `Service`; everything
that changes state goes through it so that a submit or a cancel wakes the
loop at once instead of waiting for the next periodic round.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from corral.control import accounts, executors, private
from corral.control.arrays import elements
from corral.control.scheduler import Scheduler
from corral.control.spec import JobSpec
from corral.control.store import Job, Store
from corral.errors import UserError
from corral.sched import policies

log = logging.getLogger("corral.service")

ADMIN = "admin"
MIN_ROUND_GAP = 0.1  # seconds between the end of one round and the start of the next


def corral_home() -> Path:
    """CORRAL_HOME, else ~/.corral (created)."""
    home = Path(os.environ.get("CORRAL_HOME", Path.home() / ".corral"))
    home.mkdir(parents=True, exist_ok=True)
    return home


@dataclass(frozen=True)
class ServiceConfig:
    """How the service runs: where its state lives, how many devices, which policy, how often."""

    home: Path
    db: str | None = None  # SQLAlchemy URL; None: CORRAL_DB or SQLite under home
    devices: int | None = None  # None: CUDA devices, else a CPU-based number
    policy: str = "priority"
    placer: str = "pack"
    round_seconds: float = 5.0
    grace: float = 10.0
    executor: str = "local"  # corral.control.executors.available()
    ray_address: str = "auto"  # the ray executor's cluster: auto or HOST:PORT
    checkpoint_root: Path | None = None  # the ray executor's checkpoints: a path every node reaches
    placement_timeout: float = 30.0  # the ray executor: seconds a gang may wait to be placed
    ca_cert: Path | None = None  # given to jobs as CORRAL_CA_CERT, to verify an https service's certificate


class Service:
    """One corral service: the store, its executor and the scheduler loop."""

    def __init__(self, config: ServiceConfig) -> None:
        if config.devices is not None and not 1 <= config.devices <= 4096:
            raise UserError(f"--devices must be between 1 and 4096, got {config.devices}")
        if config.round_seconds <= 0:
            raise UserError(f"--round must be > 0 seconds, got {config.round_seconds}")
        if config.grace < 0:
            raise UserError(f"--grace must be >= 0 seconds, got {config.grace}")
        policy = policies.get(config.policy, placer=config.placer)
        self.config = config
        home = Path(config.home)
        # Everything this process (and every run it starts) creates is private to its owner.
        private.private_umask()
        # The executor first: an unreachable cluster is refused before anything is written.
        self.executor = executors.create(
            config.executor,
            home=home,
            devices=config.devices,
            ray_address=config.ray_address,
            checkpoint_root=config.checkpoint_root,
            placement_timeout=config.placement_timeout,
        )
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        private.tighten(home)  # a home made before (database and logs world-readable) is repaired
        self.store = Store(config.db or os.environ.get("CORRAL_DB") or f"sqlite:///{home / 'corral.db'}")
        self.scheduler = Scheduler(self.store, self.executor, policy, grace=config.grace)
        self.url: str | None = None  # set by the server once it listens; given to jobs for metrics
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.rounds = 0
        self.last_round_seconds = 0.0

    # -- users ---------------------------------------------------------------

    def ensure_admin(self) -> Path | None:
        """Create the admin user on first start; return the file its token was written to (None if it existed)."""
        if self.store.has_admin():
            return None
        token = self.store.create_user(ADMIN, admin=True)
        home = Path(self.config.home)
        path = home / "admin-token"
        _write_secret(path, token)
        # The CLI reads ~/.corral/token (CORRAL_HOME/token): the operator who
        # started the server can use it at once.
        if not (home / "token").exists():
            _write_secret(home / "token", token)
        return path

    # -- jobs ----------------------------------------------------------------

    def total_devices(self) -> int:
        """Devices the executor can hand out."""
        return self.executor.cluster().total_devices

    def submit(self, spec: JobSpec, user: str) -> list[Job]:
        """Queue a job, or the jobs of an array (all or none); refused when it could never fit the
        cluster, names a dependency that does not exist, or breaks a limit of its user or group."""
        if spec.array is None:
            return self.submit_batch([spec], user)
        items = elements(spec.array if isinstance(spec.array, str) else spec.array.values)
        base = spec.model_dump(mode="json", by_alias=False)
        specs = []
        for index, value in items:
            env = {**base["env"], "CORRAL_ARRAY_INDEX": str(index), "CORRAL_ARRAY_VALUE": value}
            specs.append(JobSpec.model_validate({**base, "array": None, "env": env}))
        return self.submit_batch(specs, user, array_indices=[i for i, _ in items])

    def submit_batch(self, specs: list[JobSpec], user: str, *, array_indices: list[int] | None = None) -> list[Job]:
        """Queue several jobs in one transaction (all or none), each checked as `submit` checks one."""
        total = self.total_devices()
        for spec in specs:
            if spec.array is not None:
                raise UserError("array: a batch holds plain jobs; submit an array on its own")
            if (spec.resources.min_gpus or 1) > total:
                raise UserError(
                    f"resources: the job needs at least {spec.resources.min_gpus} devices; "
                    f"this cluster has {total}, so it could never run"
                )
        wanted = sorted({d for spec in specs for d in spec.depends_on})
        if wanted:
            known = self.store.existing_job_ids(wanted)
            missing = [d for d in wanted if d not in known]
            if missing:
                raise UserError(f"depends_on: no job with id {', '.join(map(str, missing))}")
        accounts.check_submit(self.store, user, max(s.priority for s in specs), count=len(specs))
        jobs = self.store.add_jobs(
            [s.model_dump(mode="json", by_alias=False) for s in specs], user, array_indices=array_indices
        )
        self.wake()
        return jobs

    def cancel(self, job_id: int) -> str:
        """Cancel a job (stopping its run if it has one); return its state now."""
        state = self.scheduler.cancel(job_id)
        self.wake()
        return state

    def cancel_many(self, job_ids: list[int]) -> list[int]:
        """Cancel these jobs (one request, one lock); the ids of those that were still active."""
        cancelled = self.scheduler.cancel_many(job_ids)
        self.wake()
        return cancelled

    # -- the loop --------------------------------------------------------------

    def wake(self) -> None:
        """Ask for a scheduling round now."""
        self._wake.set()

    def start(self) -> None:
        """Recover from the store, then run the scheduler loop in a background thread."""
        self.scheduler.recover()
        self._thread = threading.Thread(target=self._loop, name="corral-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the loop (runs keep going: they belong to no process of the service)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        close = getattr(self.executor, "close", None)
        if close is not None:  # the ray executor disconnects its driver; its gangs keep running
            close()

    def _loop(self) -> None:
        last = 0.0
        while not self._stop.is_set():
            woken = self._wake.wait(timeout=0.2)
            self._wake.clear()
            if self._stop.is_set():
                break
            now = time.monotonic()
            # Rounds run on a wake-up (submit, cancel), when a run ended or must
            # be killed, and every round_seconds; the executor check is cheap.
            if woken or self.executor.needs_attention() or now - last >= self.config.round_seconds:
                # A burst of submissions becomes one round, not one per submit: a
                # round reads every active job, and back-to-back rounds would
                # hold the database's write lock against the submitters.
                # The gap grows with the round's cost so rounds take at most a
                # third of the service's time under a flood of submissions.
                gap = last + max(MIN_ROUND_GAP, 2 * self.last_round_seconds) - now
                if gap > 0 and self._stop.wait(gap):
                    break
                self._wake.clear()
                now = time.monotonic()
                t0 = time.perf_counter()
                try:
                    self.scheduler.round(extra_env=self._job_env())
                except Exception:  # the loop must outlive any one bad round
                    log.exception("scheduling round failed")
                self.last_round_seconds = time.perf_counter() - t0
                self.rounds += 1
                last = time.monotonic()

    def _job_env(self) -> dict[str, str]:
        env = {"CORRAL_SERVER": self.url} if self.url else {}
        if self.url and self.config.ca_cert is not None:  # jobs verify an https service with the server's CA
            env["CORRAL_CA_CERT"] = str(self.config.ca_cert)
        return env


def _write_secret(path: Path, text: str) -> None:
    """Write a token readable by its owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
