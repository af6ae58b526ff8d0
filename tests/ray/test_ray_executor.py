"""The Ray executor on a fake 3-node cluster, driven directly (no service): gangs, placement, failures."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from corral.control.executors.base import Ending, RunOutcome
from corral.control.executors.ray_executor import RayExecutor
from corral.sched.types import Allocation
from tests.conftest import ROOT, WORKERS, read_traces, run_corral

pytestmark = pytest.mark.slow


@pytest.fixture
def executor(ray_cluster, tmp_path: Path):
    ex = RayExecutor(tmp_path / "home", address=ray_cluster.address, placement_timeout=20)
    yield ex
    for job_id in list(ex.gangs):
        gang = ex.gangs[job_id]
        ex.release(gang.handle)
    ex.close()


def wait_outcome(ex: RayExecutor, job_id: int, timeout: float = 120) -> RunOutcome:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for outcome in ex.poll():
            if outcome.job_id == job_id:
                return outcome
        time.sleep(0.1)
    raise AssertionError(f"job {job_id}: no outcome in {timeout} s; log:\n{ex.log_tail(job_id, 30)}")


def test_cluster_is_the_ray_nodes(executor: RayExecutor) -> None:
    view = executor.cluster()
    assert [n.name for n in view.nodes] == ["n0", "n1", "n2"]
    assert view.total_devices == 6
    assert all(n.labels["type"] == "slot" and n.labels["ray_node_id"] for n in view.nodes)


def test_ranks_run_where_the_allocation_says(executor: RayExecutor, ray_cluster, tmp_path: Path) -> None:
    out = tmp_path / "out"
    alloc = Allocation.of({"n2": [1], "n0": [0, 1]})
    executor.start(1, 1, ["python", str(WORKERS / "where_am_i.py"), str(out)], alloc, env={}, workdir=str(ROOT))
    outcome = wait_outcome(executor, 1)
    assert outcome.ending == Ending.SUCCEEDED, executor.log_tail(1, 20)
    where = {r: json.loads((out / f"where-{r}.json").read_text()) for r in range(3)}
    ids = ray_cluster.node_ids()
    # torchrun's numbering: node n0 (group rank 0) holds ranks 0-1, n2 (group rank 1) rank 2.
    assert [ids[where[r]["CORRAL_RAY_NODE_ID"]] for r in range(3)] == ["n0", "n0", "n2"]
    assert [where[r]["GROUP_RANK"] for r in range(3)] == ["0", "0", "1"]
    assert [where[r]["LOCAL_RANK"] for r in range(3)] == ["0", "1", "0"]
    assert [where[r]["LOCAL_WORLD_SIZE"] for r in range(3)] == ["2", "2", "1"]
    assert {where[r]["WORLD_SIZE"] for r in range(3)} == {"3"}
    assert [where[r]["CUDA_VISIBLE_DEVICES"] for r in range(3)] == ["0", "1", "1"]
    assert where[0]["CORRAL_CHECKPOINT_DIR"] == executor.checkpoint_location(1)
    # Every rank's output reached the service's home: per rank and merged with a prefix.
    executor.release(outcome.handle)
    merged = executor.read_log(1, None).decode()
    for r in range(3):
        assert f"[rank {r}] rank {r} of 3" in merged
        assert f"rank {r} of 3" in executor.read_log(1, r).decode()


def test_ddp_on_two_nodes_equals_one_node(executor: RayExecutor, tmp_path: Path) -> None:
    args = ["--n", "128", "--batch-size", "4", "--epochs", "1"]
    ref = tmp_path / "ref"
    done = run_corral("run", "--nproc", "4", str(WORKERS / "trainer.py"), "--out", str(ref), *args)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "ray"
    alloc = Allocation.of({"n0": [0, 1], "n1": [0, 1]})
    argv = ["python", str(WORKERS / "trainer.py"), "--out", str(out), *args]
    executor.start(2, 1, argv, alloc, env={}, workdir=str(ROOT))
    outcome = wait_outcome(executor, 2)
    assert outcome.ending == Ending.SUCCEEDED, executor.log_tail(2, 20)
    want, got = read_traces(ref), read_traces(out)
    assert sorted(got) == sorted(want) == [(r, 0) for r in range(4)]
    for key in want:
        assert got[key]["steps"] == want[key]["steps"]
        flat = [v for p in got[key]["params"] for v in p]
        assert flat == pytest.approx([v for p in want[key]["params"] for v in p], rel=1e-9, abs=1e-12)


def test_failed_rank_stops_the_gang_at_once(executor: RayExecutor, tmp_path: Path) -> None:
    """Rank 1 exits 3 while rank 0 would sleep a minute: the gang ends in seconds, FAILED with code 3."""
    script = tmp_path / "fail.py"
    script.write_text(
        "import os, sys, time\n"
        "if os.environ['RANK'] == '1':\n    print('rank 1 gives up', flush=True); sys.exit(3)\n"
        "time.sleep(60)\n"
    )
    t0 = time.monotonic()
    executor.start(3, 1, ["python", str(script)], Allocation.of({"n0": [0], "n1": [0]}), env={}, workdir=None)
    outcome = wait_outcome(executor, 3, timeout=60)
    assert outcome.ending == Ending.FAILED and outcome.exit_code == 3, outcome
    assert time.monotonic() - t0 < 45  # long before rank 0's sleep would end
    assert "rank 1 gives up" in executor.log_tail(3, 10)


def test_dead_rank_actor_is_lost_and_its_node_left_out_until_it_answers(executor: RayExecutor, tmp_path: Path) -> None:
    """A rank actor SIGKILLed on a healthy node: LOST naming the node, which is out of the cluster until a probe runs.

    On a lost node the actors die seconds before Ray's health check marks the node dead; without the
    quarantine the next round placed the job on the same node again and waited out the placement timeout.
    """
    import os
    import signal

    import ray

    script = tmp_path / "sleep.py"
    script.write_text("import time\nprint('up', flush=True)\ntime.sleep(120)\n")
    executor.start(7, 1, ["python", str(script)], Allocation.of({"n0": [0], "n1": [0]}), env={}, workdir=None)
    deadline = time.monotonic() + 60
    while "up" not in executor.read_log(7, 1).decode() and time.monotonic() < deadline:
        executor.log_tail(7)  # copies rank output into the home
        time.sleep(0.2)
    pid = ray.get(executor.gangs[7].actors[1].node.remote())["pid"]
    os.kill(pid, signal.SIGKILL)
    outcome = wait_outcome(executor, 7, timeout=60)
    assert outcome.ending == Ending.LOST and "n1" in outcome.detail, outcome
    assert "n1" not in [n.name for n in executor.cluster().nodes]
    executor.release(outcome.handle)
    deadline = time.monotonic() + 60
    while "n1" not in [n.name for n in executor.cluster().nodes] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [n.name for n in executor.cluster().nodes] == ["n0", "n1", "n2"]


def test_stop_preempts_every_rank(executor: RayExecutor, tmp_path: Path) -> None:
    """SIGTERM to the gang: the Job API checkpoints on every rank and exits 75 -> PREEMPTED."""
    out = tmp_path / "out"
    argv = ["python", str(WORKERS / "trainer.py"), "--out", str(out), "--n", "4000", "--batch-size", "4",
            "--sleep", "0.05"]  # fmt: skip
    handle = executor.start(4, 1, argv, Allocation.of({"n1": [1], "n2": [0]}), env={}, workdir=str(ROOT))
    deadline = time.monotonic() + 90
    while "step" not in executor.read_log(4, 0).decode() and time.monotonic() < deadline:
        if list(out.glob("samples-*.jsonl")) and any(p.stat().st_size for p in out.glob("samples-*.jsonl")):
            break
        time.sleep(0.2)
    executor.stop(handle, grace=20)
    outcome = wait_outcome(executor, 4, timeout=60)
    assert outcome.ending == Ending.PREEMPTED, (outcome, executor.log_tail(4, 20))
    assert Path(executor.checkpoint_location(4)).exists()


def test_unplaceable_gang_comes_back_unplaced(ray_cluster, tmp_path: Path) -> None:
    """Slots taken outside corral's view: the placement group times out, the run is UNPLACED (never ran)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    ex = RayExecutor(tmp_path / "home", address=ray_cluster.address, placement_timeout=2)
    try:
        squatter = ray.remote(num_cpus=0, resources={"slot": 2})(lambda: time.sleep(120))
        node_id = next(i for i, n in ray_cluster.node_ids().items() if n == "n2")
        ref = squatter.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)).remote()
        time.sleep(1)
        ex.start(5, 1, ["python", "-c", "pass"], Allocation.of({"n2": [0, 1]}), env={}, workdir=None)
        outcome = wait_outcome(ex, 5, timeout=30)
        assert outcome.ending == Ending.UNPLACED and "not placed" in outcome.detail
        ex.release(outcome.handle)
        ray.cancel(ref, force=True)
    finally:
        ex.close()
