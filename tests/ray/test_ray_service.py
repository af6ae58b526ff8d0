"""The scheduler loop on the Ray executor: placement as the placer chose, node loss, failing ranks."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from corral.control.executors.ray_executor import RayExecutor
from corral.control.scheduler import Scheduler
from corral.control.spec import JobSpec
from corral.control.store import Store
from corral.sched import policies
from tests.conftest import ROOT, WORKERS

pytestmark = pytest.mark.slow


class Loop:
    """A store, the Ray executor and a scheduler whose rounds the test drives."""

    def __init__(self, tmp: Path, address: str, placer: str = "pack") -> None:
        self.store = Store(f"sqlite:///{tmp / 'db.sqlite'}")
        self.executor = RayExecutor(tmp / "home", address=address, placement_timeout=20)
        self.sched = Scheduler(self.store, self.executor, policies.get("priority", placer=placer), grace=15)

    def submit(self, cmd: str, gpus: int, **extra) -> int:
        spec = {
            "name": "job",
            "entrypoint": cmd,
            "workdir": str(ROOT),
            "env": {"OMP_NUM_THREADS": "1"},
            "resources": {"gpus": gpus},
            **extra,
        }
        return self.store.add_job(JobSpec.model_validate(spec).model_dump(mode="json"), "alice").id

    def run_until(self, done, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            jobs = [(j.id, j.state, j.reason, j.allocation) for j in self.store.list_jobs()]
            assert time.monotonic() < deadline, jobs
            self.sched.round()
            time.sleep(0.2)

    def state(self, job_id: int) -> str:
        return self.store.get_job(job_id).state

    def close(self) -> None:
        for gang in list(self.executor.gangs.values()):
            self.executor.release(gang.handle)
        self.executor.close()


@pytest.mark.parametrize("placer", ["pack", "spread"])
def test_ranks_land_where_the_placer_chose(ray_cluster, tmp_path: Path, placer: str) -> None:
    loop = Loop(tmp_path, ray_cluster.address, placer)
    try:
        out = tmp_path / "out"
        job = loop.submit(f"python {WORKERS / 'where_am_i.py'} {out}", gpus=2)
        loop.run_until(lambda: loop.state(job) == "SUCCEEDED")
        alloc = next(e.data["allocation"] for e in loop.store.events(job) if e.dst == "RUNNING")
        ids = ray_cluster.node_ids()
        ran = [ids[json.loads((out / f"where-{r}.json").read_text())["CORRAL_RAY_NODE_ID"]] for r in range(2)]
        assert ran == [n for n, devs in sorted(alloc.items()) for _ in devs]
        assert len(set(ran)) == (1 if placer == "pack" else 2)
    finally:
        loop.close()


def test_lost_node_resumes_from_checkpoint_elsewhere_without_using_a_restart(ray_cluster, tmp_path: Path) -> None:
    loop = Loop(tmp_path, ray_cluster.address, "spread")
    every = 10
    try:
        out = tmp_path / "out"
        cmd = (
            f"{sys.executable} {WORKERS / 'trainer.py'} --out {out} --n 480 --batch-size 4 --sleep 0.1 "
            f"--checkpoint-every {every} --per-run"
        )
        job = loop.submit(cmd, gpus=2)
        first = out / "samples-0-0-from0.jsonl"
        loop.run_until(lambda: first.exists() and len(first.read_text().splitlines()) >= 2 * every + 5)
        alloc = loop.store.get_job(job).allocation
        victim = sorted(alloc)[-1]
        ray_cluster.remove(victim)
        try:
            loop.run_until(lambda: loop.state(job) == "SUCCEEDED", timeout=180)
        finally:
            ray_cluster.add(victim)  # the session's cluster keeps its three nodes
        record = loop.store.get_job(job)
        events = loop.store.events(job)
        lost = [e for e in events if e.data.get("kind") == "lost"]
        assert len(lost) == 1 and victim in lost[0].cause, [e.cause for e in events]
        assert record.restarts == 0
        runs = [e.data["allocation"] for e in events if e.dst == "RUNNING"]
        assert len(runs) == 2 and victim not in runs[1]
        # The second run resumed from the last checkpoint: at most one interval of steps was redone.
        last_step = max(json.loads(line)[1] for line in first.read_text().splitlines())
        resumed = [p for p in out.glob("samples-0-1-from*.jsonl")]
        assert len(resumed) == 1
        start = int(resumed[0].stem.rsplit("from", 1)[1])
        assert start > 0 and last_step - start <= every, (last_step, start)
    finally:
        loop.close()


def test_raising_rank_restarts_up_to_max_restarts_then_fails(ray_cluster, tmp_path: Path) -> None:
    loop = Loop(tmp_path, ray_cluster.address)
    script = tmp_path / "boom.py"
    script.write_text(
        "import os, time\nif os.environ['RANK'] == '1':\n    raise RuntimeError('boom on rank 1')\ntime.sleep(120)\n"
    )
    try:
        job = loop.submit(f"python {script}", gpus=2, max_restarts=1)
        loop.run_until(lambda: loop.state(job) == "FAILED", timeout=90)
        record = loop.store.get_job(job)
        assert record.exit_code == 1 and record.restarts == 1 and record.attempt == 2
        assert "boom on rank 1" in (record.last_log or "")
        assert [e.dst for e in loop.store.events(job)].count("RUNNING") == 2
    finally:
        loop.close()
