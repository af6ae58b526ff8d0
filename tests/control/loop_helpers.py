"""A scheduler loop on the FakeExecutor with a hand-driven clock, for fast tests of every transition."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corral.control.executors.fake import FakeExecutor
from corral.control.scheduler import Scheduler
from corral.control.store import Job, Store
from corral.sched import policies
from corral.sched.types import ClusterView


@dataclass
class Clock:
    """Simulated wall clock."""

    t: float = 1000.0

    def __call__(self) -> float:
        return self.t


@dataclass
class FakeLoop:
    """A store, a fake executor and a scheduler that can be 'restarted' (a new Scheduler, same store and runs)."""

    store: Store
    executor: FakeExecutor
    clock: Clock
    policy: str = "priority"
    grace: float = 10.0
    opts: dict[str, Any] = field(default_factory=dict)
    sched: Scheduler = field(init=False)

    def __post_init__(self) -> None:
        self.sched = self._new()

    def _new(self) -> Scheduler:
        return Scheduler(
            self.store, self.executor, policies.get(self.policy, **self.opts), grace=self.grace, clock=self.clock
        )

    def restart(self) -> None:
        """The service dies and starts again: its executor forgets what it watched, the new one recovers."""
        self.executor.forget_all()
        self.sched = self._new()
        self.sched.recover()

    def submit(
        self,
        name: str = "job",
        gpus: int = 1,
        *,
        lo: int | None = None,
        hi: int | None = None,
        user: str = "alice",
        **spec: Any,
    ) -> int:
        """Queue a job; returns its id."""
        body = {
            "name": name,
            "entrypoint": "python train.py",
            "resources": {"gpus": gpus, "min_gpus": lo or gpus, "max_gpus": hi or gpus},
            **spec,
        }
        return self.store.add_job(body, user).id

    def round(self, advance: float = 0.0) -> None:
        """Advance the clock, then run one round."""
        self.clock.t += advance
        self.sched.round()

    def job(self, job_id: int) -> Job:
        """The stored job."""
        job = self.store.get_job(job_id)
        assert job is not None
        return job

    def path(self, job_id: int) -> list[str]:
        """The job's states in order."""
        return [e.dst for e in self.store.events(job_id)]

    def starts(self, job_id: int) -> int:
        """How many runs of the job the executor started."""
        return sum(1 for h in self.executor.started if h.job_id == job_id)


def make_loop(tmp_path: Path, *, devices: int = 4, nodes: int = 1, **kw: Any) -> FakeLoop:
    """A FakeLoop on a fresh SQLite store."""
    clock = Clock()
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    executor = FakeExecutor(ClusterView.uniform(nodes, devices), clock)
    return FakeLoop(store, executor, clock, **kw)
