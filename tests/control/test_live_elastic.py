"""Live elastic resize and live timeout with real processes (the service's loop, the local executor).

An elastic job grows into idle devices and shrinks when a higher-priority job arrives; each resize is a
checkpoint and a restart at the new world size, and across all its runs the job trains on every sample of
its epoch once. A job's `timeout` counts the time its run held devices, across a restart of the service.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from corral.control.executors.local import LocalExecutor
from corral.control.scheduler import Scheduler
from corral.control.store import Store
from corral.sched import policies
from tests.conftest import ROOT, WORKERS

pytestmark = pytest.mark.slow
N = 240  # samples in the elastic job's epoch


def _spec(name: str, cmd: str, gpus: int, lo: int, hi: int, priority: int = 0, **extra) -> dict:
    return {
        "name": name,
        "entrypoint": cmd,
        "workdir": str(ROOT),
        "env": {"OMP_NUM_THREADS": "1"},
        "priority": priority,
        "resources": {"gpus": gpus, "min_gpus": lo, "max_gpus": hi},
        **extra,
    }


def _run_until(sched: Scheduler, store: Store, done, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, [(j.id, j.state, j.reason, j.allocation) for j in store.list_jobs()]
        sched.round()
        time.sleep(0.2)


def _lines(out: Path) -> int:
    return sum(len(f.read_text().splitlines()) for f in out.glob("samples-*.jsonl"))


def _sizes(store: Store, job_id: int) -> list[int]:
    """Device counts of the job's runs, in order, from the allocation each RUNNING event records."""
    return [
        sum(len(d) for d in e.data["allocation"].values())
        for e in store.events(job_id)
        if e.dst == "RUNNING" and e.data.get("allocation")
    ]


def test_elastic_job_grows_into_idle_devices_shrinks_for_priority_and_sees_each_sample_once(tmp_path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    executor = LocalExecutor(devices=2, home=tmp_path / "home")
    sched = Scheduler(store, executor, policies.get("priority"), grace=15)
    out = tmp_path / "elastic"
    py = sys.executable
    # --per-run: each run (a fresh attempt 0 for the executor) keeps its own samples file, named by its resume step.
    elastic = store.add_job(
        _spec(
            "elastic",
            f"{py} {WORKERS / 'trainer.py'} --out {out} --epochs 1 --n {N} --batch-size 4 --sleep 0.15 "
            "--checkpoint-every 100 --per-run",
            gpus=1,
            lo=1,
            hi=2,
        ),
        "alice",
    )
    # Alone, it takes both devices (asked for 1, may use 2).
    _run_until(sched, store, lambda: store.get_job(elastic.id).state == "RUNNING" and _lines(out) >= 6)
    assert _sizes(store, elastic.id) == [2]

    # A higher-priority job needs one device: the elastic job shrinks to 1 (a resize), it does not stop.
    urgent = store.add_job(_spec("urgent", f"{py} {WORKERS / 'sleeper.py'}", 1, 1, 1, priority=10), "bob")
    _run_until(
        sched,
        store,
        lambda: (
            store.get_job(urgent.id).state == "RUNNING"
            and _sizes(store, elastic.id) == [2, 1]
            and store.get_job(elastic.id).state == "RUNNING"
            and _lines(out) >= 6 + 2 + 6  # the run at 1 device trains a few steps
            and len(list(out.glob("samples-0-*.jsonl"))) == 2
        ),
        timeout=120,
    )
    # The urgent job ends: the elastic job grows back into the idle device.
    sched.cancel(urgent.id)
    _run_until(sched, store, lambda: store.get_job(elastic.id).state == "SUCCEEDED", timeout=180)

    job = store.get_job(elastic.id)
    assert _sizes(store, elastic.id) == [2, 1, 2]
    assert job.resizes == 2 and job.preemptions == 0 and job.restarts == 0
    kinds = [e.data.get("kind") for e in store.events(elastic.id) if e.dst == "PREEMPTED"]
    assert kinds == ["resize", "resize"], [(e.dst, e.cause, e.data) for e in store.events(elastic.id)]

    # Every run after the first resumed from the step the run before it saved: steps continue.
    runs = sorted({int(f.name.split("from")[1].split(".")[0]) for f in out.glob("samples-*.jsonl")})
    assert len(runs) == 3 and runs[0] == 0 and runs[1] > 0 and runs[2] > runs[1], runs
    seen: list[int] = []
    for i, start in enumerate(runs):
        end = runs[i + 1] if i + 1 < len(runs) else None
        ranks = 0
        for f in out.glob(f"samples-*-0-from{start}.jsonl"):
            ranks += 1
            for line in f.read_text().splitlines():
                epoch, step, idx = json.loads(line)
                assert epoch == 0
                # The run's steps up to the checkpoint the next run resumed from (a stop checkpoints the step
                # it stopped at: nothing after it was trained on and kept).
                if end is None or step <= end:
                    seen.extend(idx)
        assert ranks == [2, 1, 2][i], (start, ranks)
    final = json.loads((out / "trace-0-0.json").read_text())
    assert final["resumed_from"] == runs[2] and final["world_size"] == 2
    # Every sample of the epoch, each once; a rank with one batch fewer than its peers repeats a few samples
    # in its last batch (as DistributedSampler does), at most one batch per rank of each run.
    assert set(seen) == set(range(N))
    assert len(seen) - N <= 4 * 2 * 3, len(seen) - N


def test_timeout_counts_running_time_across_a_service_restart(tmp_path) -> None:
    """A 12 s timeout: the service runs 4 s, is gone 4 s (the run goes on), and a new one ends the job at 12 s."""
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    home = tmp_path / "home"
    sched = Scheduler(store, LocalExecutor(devices=1, home=home), policies.get("fifo"), grace=2)
    job = store.add_job(_spec("slow", f"{sys.executable} {WORKERS / 'sleeper.py'}", 1, 1, 1, timeout=12), "alice")
    _run_until(sched, store, lambda: store.get_job(job.id).state == "RUNNING")
    started = next(e.time for e in store.events(job.id) if e.dst == "RUNNING")
    end = time.monotonic() + 4
    while time.monotonic() < end:
        sched.round()
        time.sleep(0.2)
    del sched  # the service dies; nothing of it remains but the store and the run
    time.sleep(4)
    fresh = Scheduler(store, LocalExecutor(devices=1, home=home), policies.get("fifo"), grace=2)
    fresh.recover()
    assert store.get_job(job.id).state == "RUNNING"  # adopted
    _run_until(fresh, store, lambda: store.get_job(job.id).state == "FAILED", timeout=60)
    final = store.get_job(job.id)
    ended = store.events(job.id)[-1]
    assert "timed out" in ended.cause, ended.cause
    # Not early (a restart once counted the run time twice), and not much later than due: the stop came
    # within a round or two of 12 s, and the sleeper dies of SIGTERM at once.
    assert 12.0 <= ended.time - started < 12.0 + 6.0, ended.time - started
    assert 12.0 <= final.run_time < 12.0 + 6.0, final.run_time
