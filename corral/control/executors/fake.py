"""A fake executor with a simulated clock: runs end when a test says so, can be lost or ignore SIGTERM.

It drives the scheduler loop's tests in milliseconds. Like real runs, fake
runs outlive the service: a test "restarts the service" by building a new
Scheduler over the same store and the same FakeExecutor, which then only
knows its runs again once they are adopted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from corral.control.executors.base import Ending, RunHandle, RunOutcome
from corral.sched.types import Allocation, ClusterView

PREEMPTED = 75


@dataclass
class FakeRun:
    """One fake run and what the test lets it do."""

    handle: RunHandle
    allocation: Allocation
    argv: list[str]
    env: dict[str, str]
    started: float
    ignore_sigterm: bool = False
    stop_requested: float | None = None  # clock time of the first stop
    kill_at: float | None = None
    outcome: RunOutcome | None = None
    log: list[str] = field(default_factory=list)


class FakeExecutor:
    """An executor whose runs live in memory on a clock the test advances."""

    name = "fake"

    def __init__(self, cluster: ClusterView, clock: Callable[[], float]) -> None:
        self._cluster = cluster
        self.clock = clock
        self.runs: dict[tuple[int, int], FakeRun] = {}  # every run ever started, by (job, attempt)
        self.watched: set[tuple[int, int]] = set()  # runs this "service" knows (cleared by forget_all)
        self.started: list[RunHandle] = []
        self.fail_start: Callable[[int, int], bool] = lambda job_id, attempt: False
        self.ignore_sigterm: set[int] = set()  # job ids whose runs ignore SIGTERM
        self.signals: list[tuple[RunHandle, str]] = []

    # -- what a test does ---------------------------------------------------------------

    def finish(self, job_id: int, exit_code: int = 0) -> None:
        """The job's live run exits by itself with `exit_code`."""
        run = self.live(job_id)
        assert run is not None, f"job {job_id} has no live run"
        ending = Ending.SUCCEEDED if exit_code == 0 else Ending.PREEMPTED if exit_code == PREEMPTED else Ending.FAILED
        run.outcome = RunOutcome(run.handle, ending, exit_code)

    def lose(self, job_id: int) -> None:
        """The job's live run vanishes (its node died)."""
        run = self.live(job_id)
        assert run is not None, f"job {job_id} has no live run"
        run.outcome = RunOutcome(run.handle, Ending.LOST, None, "node lost")

    def live(self, job_id: int) -> FakeRun | None:
        """The run of `job_id` that has not ended, if any."""
        for (j, _), run in self.runs.items():
            if j == job_id and run.outcome is None:
                return run
        return None

    def live_runs(self) -> list[FakeRun]:
        """Every run that has not ended."""
        return [r for r in self.runs.values() if r.outcome is None]

    def forget_all(self) -> None:
        """What a crash of the service does to its executor: it no longer watches any run (they go on)."""
        self.watched.clear()

    # -- the interface ---------------------------------------------------------------------

    def cluster(self) -> ClusterView:
        """The cluster the test gave."""
        return self._cluster

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
        """Start a fake run (raises when the test's fail_start says so)."""
        if self.fail_start(job_id, attempt):
            raise RuntimeError(f"fake start of job {job_id} failed")
        handle = RunHandle(job_id, attempt, f"fake-{job_id}-{attempt}")
        assert (job_id, attempt) not in self.runs, f"attempt {attempt} of job {job_id} started twice"
        run = FakeRun(
            handle, allocation, list(argv), dict(env), self.clock(), ignore_sigterm=job_id in self.ignore_sigterm
        )
        self.runs[job_id, attempt] = run
        self.watched.add((job_id, attempt))
        self.started.append(handle)
        return handle

    def stop(self, handle: RunHandle, grace: float) -> None:
        """SIGTERM (once): a run that heeds it checkpoints and exits 75; a deaf one is killed after grace."""
        run = self.runs.get((handle.job_id, handle.attempt))
        if run is None or run.outcome is not None or run.stop_requested is not None:
            return
        now = self.clock()
        run.stop_requested, run.kill_at = now, now + grace
        self.signals.append((handle, "SIGTERM"))
        if not run.ignore_sigterm:
            run.outcome = RunOutcome(handle, Ending.PREEMPTED, PREEMPTED)

    def poll(self) -> list[RunOutcome]:
        """Outcomes of watched runs; kills deaf runs whose grace ran out."""
        now = self.clock()
        out = []
        for key in sorted(self.watched):
            run = self.runs[key]
            if run.outcome is None and run.kill_at is not None and now >= run.kill_at:
                self.signals.append((run.handle, "SIGKILL"))
                run.outcome = RunOutcome(run.handle, Ending.KILLED, 137, "killed after the stop grace ran out")
            if run.outcome is not None:
                out.append(run.outcome)
        return out

    def release(self, handle: RunHandle) -> None:
        """Stop reporting a run."""
        self.watched.discard((handle.job_id, handle.attempt))

    def needs_attention(self) -> bool:
        """A watched run ended or must be killed."""
        now = self.clock()
        return any(
            self.runs[k].outcome is not None or (self.runs[k].kill_at is not None and now >= self.runs[k].kill_at)  # type: ignore[operator]
            for k in self.watched
        )

    def adopt(self, handle: RunHandle) -> bool:
        """Watch a run again after a restart: True when it exists (alive, or ended with an outcome)."""
        key = (handle.job_id, handle.attempt)
        if key not in self.runs or self.runs[key].handle.ref != handle.ref:
            return False
        self.watched.add(key)
        return True

    def running(self) -> list[int]:
        """Job ids of watched runs that have not ended."""
        return sorted({j for (j, a) in self.watched if self.runs[j, a].outcome is None})

    def find(self, job_id: int, attempt: int) -> RunHandle | None:
        """The run of (job, attempt) if it was started."""
        run = self.runs.get((job_id, attempt))
        if run is None:
            return None
        self.watched.add((job_id, attempt))
        return run.handle

    def read_log(self, job_id: int, rank: int | None, offset: int = 0, limit: int = 1 << 20) -> bytes:
        """What the fake runs of a job "printed"."""
        text = "".join(line + "\n" for (j, _), r in sorted(self.runs.items()) if j == job_id for line in r.log)
        return text.encode()[offset : offset + limit]

    def log_tail(self, job_id: int, lines: int = 5) -> str:
        """The last lines of the fake log."""
        return "\n".join(self.read_log(job_id, None).decode().splitlines()[-lines:])

    def checkpoint_location(self, job_id: int) -> str:
        """A made-up location."""
        return f"fake://{job_id}/checkpoint"
