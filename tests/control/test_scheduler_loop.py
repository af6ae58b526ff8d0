"""The live loop with real processes: preemption with resume, restart after failure, cancel, recovery."""

from __future__ import annotations

import json
import sys
import time

import pytest

from corral.control.executors.local import LocalExecutor
from corral.control.scheduler import Scheduler
from corral.control.states import JobState
from corral.control.store import Store
from corral.sched import policies
from tests.conftest import ROOT, WORKERS

pytestmark = pytest.mark.slow


def _spec(name: str, cmd: str, gpus: int = 1, priority: int = 0, **extra) -> dict:
    return {
        "name": name,
        "entrypoint": cmd,
        "workdir": str(ROOT),
        "priority": priority,
        "resources": {"gpus": gpus, "min_gpus": gpus, "max_gpus": gpus},
        **extra,
    }


def _run_until(sched: Scheduler, store: Store, done, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, [(j.id, j.state, j.reason) for j in store.list_jobs()]
        sched.round()
        time.sleep(0.2)


@pytest.fixture
def env(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    executor = LocalExecutor(devices=2, home=tmp_path / "home")
    sched = Scheduler(store, executor, policies.get("priority"), grace=15)
    return store, executor, sched, tmp_path


def test_high_priority_preempts_low_which_resumes_from_checkpoint(env) -> None:
    store, executor, sched, tmp = env
    py = sys.executable
    low = store.add_job(
        _spec(
            "low",
            f"{py} {WORKERS / 'trainer.py'} --out {tmp / 'low'} --epochs 3 --n 96 "
            "--batch-size 4 --sleep 0.05 --checkpoint-every 2",
            gpus=2,
        ),
        "alice",
    )
    _run_until(
        sched,
        store,
        lambda: (
            store.get_job(low.id).state == "RUNNING"
            and (tmp / "low" / "samples-0-0.jsonl").exists()
            and len((tmp / "low" / "samples-0-0.jsonl").read_text().splitlines()) > 5
        ),
    )
    high = store.add_job(_spec("high", f"{py} {WORKERS / 'torchrun_style.py'}", gpus=2, priority=10), "bob")
    _run_until(sched, store, lambda: store.get_job(high.id).state == "SUCCEEDED")
    _run_until(sched, store, lambda: store.get_job(low.id).state in ("SUCCEEDED", "FAILED"), timeout=120)
    job = store.get_job(low.id)
    assert job.state == "SUCCEEDED" and job.preemptions == 1 and job.restarts == 0
    path = [(e.src, e.dst) for e in store.events(low.id)]
    assert ("RUNNING", "PREEMPTED") in path and ("PREEMPTED", "PENDING") in path
    # The second run resumed from the checkpoint: its step counter continued.
    final = json.loads((tmp / "low" / "trace-0-0.json").read_text())
    assert final["resumed_from"] and final["resumed_from"] > 0
    assert final["steps"] == 3 * 96 // 8


def test_failed_job_restarts_then_succeeds_and_exhausted_restarts_fail(env) -> None:
    store, executor, sched, tmp = env
    py = sys.executable
    ok = store.add_job(_spec("flaky", f"{py} {WORKERS / 'fail_first_run.py'}", max_restarts=1), "alice")
    bad = store.add_job(_spec("broken", f"{py} {WORKERS / 'fail_first_run.py'}", max_restarts=0), "alice")
    _run_until(sched, store, lambda: all(JobState(store.get_job(j.id).state).is_terminal for j in (ok, bad)))
    assert (store.get_job(ok.id).state, store.get_job(ok.id).restarts) == ("SUCCEEDED", 1)
    failed = store.get_job(bad.id)
    assert failed.state == "FAILED" and failed.exit_code == 7
    assert "exit code 7" in store.events(bad.id)[-1].cause


def test_cancel_stops_every_rank(env) -> None:
    import psutil

    store, executor, sched, tmp = env
    job = store.add_job(_spec("sleepy", f"{sys.executable} {WORKERS / 'sleeper.py'}", gpus=2), "alice")
    log = executor.log_dir(job.id)
    _run_until(
        sched,
        store,
        lambda: all((log / f"rank-{r}.log").exists() and (log / f"rank-{r}.log").read_text() for r in (0, 1)),
    )
    launcher = psutil.Process(int(store.get_job(job.id).run_ref))
    tree = [launcher, *launcher.children(recursive=True)]
    assert sum("sleeper.py" in " ".join(p.cmdline()) for p in tree[1:]) == 2  # both ranks
    sched.cancel(job.id)
    _run_until(sched, store, lambda: store.get_job(job.id).state in ("CANCELLED", "FAILED"), timeout=30)
    assert store.get_job(job.id).state == "CANCELLED"
    _, alive = psutil.wait_procs(tree, timeout=5)
    assert [p for p in alive if p.status() != psutil.STATUS_ZOMBIE] == []


def test_pending_job_is_cancelled_at_once(env) -> None:
    store, executor, sched, tmp = env
    job = store.add_job(_spec("never", "python -c pass", gpus=1), "alice")
    assert sched.cancel(job.id) == "CANCELLED"
    assert [e.dst for e in store.events(job.id)] == ["PENDING", "CANCELLED"]


def test_restarted_service_adopts_live_runs_and_requeues_lost_ones(env) -> None:
    """A new scheduler on the same store: live runs are watched to the end, lost ones run again; none twice."""
    import os
    import signal

    store, executor, sched, tmp = env
    py = sys.executable
    live = store.add_job(
        _spec(
            "live", f"{py} {WORKERS / 'trainer.py'} --out {tmp / 'live'} --epochs 1 --n 64 --batch-size 4 --sleep 0.1"
        ),
        "alice",
    )
    lost = store.add_job(_spec("lost", f"{py} {WORKERS / 'sleeper.py'}"), "alice")
    _run_until(sched, store, lambda: all(store.get_job(j.id).state == "RUNNING" for j in (live, lost)))
    # The service dies (nothing of it remains but the store); the run of `lost` dies with the machine's luck.
    os.killpg(int(store.get_job(lost.id).run_ref), signal.SIGKILL)
    time.sleep(0.5)
    fresh = Scheduler(store, LocalExecutor(devices=2, home=executor.home), policies.get("priority"), grace=15)
    fresh.recover()
    assert store.get_job(live.id).state == "RUNNING"  # adopted, not restarted
    assert store.get_job(lost.id).state == "PENDING"
    _run_until(fresh, store, lambda: store.get_job(live.id).state == "SUCCEEDED")
    assert store.get_job(live.id).attempt == 1  # ran once
    _run_until(fresh, store, lambda: store.get_job(lost.id).state == "RUNNING")
    assert store.get_job(lost.id).attempt == 2
    fresh.cancel(lost.id)
    _run_until(fresh, store, lambda: store.get_job(lost.id).state == "CANCELLED", timeout=30)


def test_preempted_plain_script_dies_of_sigterm_and_is_requeued_not_failed(env) -> None:
    """Defect: a run ended by the stop's own SIGTERM (no checkpoint support, exit 143) was recorded FAILED."""
    store, executor, sched, tmp = env
    low = store.add_job(_spec("plain", f"{sys.executable} {WORKERS / 'sleeper.py'}", gpus=2), "alice")
    log = executor.log_dir(low.id)
    _run_until(sched, store, lambda: (log / "rank-0.log").exists() and (log / "rank-0.log").read_text())
    high = store.add_job(_spec("high", f"{sys.executable} {WORKERS / 'torchrun_style.py'}", gpus=2, priority=10), "bob")
    _run_until(sched, store, lambda: store.get_job(high.id).state == "SUCCEEDED", timeout=60)
    job = store.get_job(low.id)
    assert job.preemptions == 1 and job.restarts == 0 and job.state in ("PENDING", "RUNNING")
    assert "no checkpoint saved" in next(e.cause for e in store.events(low.id) if e.dst == "PREEMPTED")
    sched.cancel(low.id)
    _run_until(sched, store, lambda: JobState(store.get_job(low.id).state).is_terminal, timeout=30)
    assert store.get_job(low.id).state == "CANCELLED"


@pytest.mark.parametrize(
    "entrypoint", ["python -m tests.runtime.workers.torchrun_style", f"python -u {WORKERS / 'torchrun_style.py'}"]
)
def test_python_module_and_interpreter_flag_entrypoints_run(env, entrypoint: str) -> None:
    """Defect: `python -m pkg.mod` and `python -u x.py` were accepted at submit and then failed every run."""
    store, executor, sched, tmp = env
    job = store.add_job(_spec("entry", entrypoint, gpus=2), "alice")
    _run_until(sched, store, lambda: JobState(store.get_job(job.id).state).is_terminal, timeout=60)
    assert store.get_job(job.id).state == "SUCCEEDED", store.get_job(job.id).last_log
    log = (executor.log_dir(job.id) / "rank-1.log").read_text()
    assert "sum=3 rank=1" in log
