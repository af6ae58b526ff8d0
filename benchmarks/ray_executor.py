"""The local and the Ray executor side by side: start latency, a gang across nodes, recovery from a lost node.

    python benchmarks/ray_executor.py [--trials 10] [--gang-trials 3] [--loss-trials 3]

One process starts a fake Ray cluster on 127.0.0.1 (a head without devices and
four nodes of 2 slots, health checks tuned to ~2 s as in tests/ray), then
drives corral's scheduler (store, policy `priority`, a round every 0.1 s as the
service's minimum gap) over each executor in turn, on the same jobs
(benchmarks/jobs/ray_probe.py):

- submit -> all ranks running: a 2-rank job; the time from `add_job` to the
  last rank's user code starting (median of --trials);
- a 4-rank DDP gang, submit -> first step done on every rank: one node of 4
  slots for `local`, four nodes (one rank each, placer `spread`) for `ray`;
- recovery: a 2-rank DDP job checkpointing every 10 steps; on `ray` one of
  its nodes is removed (no graceful shutdown), on `local` (no nodes to lose)
  one rank is SIGKILLed (a failure, one restart allowed); the time from the
  loss to the job RUNNING again, to its first step, and the steps redone
  (the first run's last step, which may come after the loss while it is
  being detected, minus the step the new run resumed from).

Writes benchmarks/results/ray_executor.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before ray is imported: keep 127.0.0.1

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from corral.control.executors.local import LocalExecutor  # noqa: E402
from corral.control.executors.ray_executor import RayExecutor  # noqa: E402
from corral.control.scheduler import Scheduler  # noqa: E402
from corral.control.spec import JobSpec  # noqa: E402
from corral.control.store import Store  # noqa: E402
from corral.sched import policies  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROBE = ROOT / "benchmarks" / "jobs" / "ray_probe.py"
RESULTS = ROOT / "benchmarks" / "results" / "ray_executor.json"
HEALTH = {
    "health_check_period_ms": 1000,
    "health_check_failure_threshold": 2,
    "health_check_timeout_ms": 1000,
    "health_check_initial_delay_ms": 0,
}
NODES, SLOTS = ("n0", "n1", "n2", "n3"), 2
ROUND_S = 0.1
CHECKPOINT_EVERY = 10
console = Console()


class FakeCluster:
    """A Ray head without resources and named nodes of `slot`s, all on 127.0.0.1, in a temp folder."""

    def __init__(self) -> None:
        from ray.cluster_utils import Cluster

        self.tmp = tempfile.mkdtemp(prefix="corral-bench-ray-")
        os.environ["RAY_TMPDIR"] = self.tmp
        head = {"num_cpus": 0, "include_dashboard": False, "node_ip_address": "127.0.0.1", "_system_config": HEALTH}
        self.cluster = Cluster(initialize_head=True, head_node_args=head)
        self.nodes: dict[str, Any] = {}
        for name in NODES:
            self.add(name)

    def add(self, name: str) -> None:
        """Add (or bring back) node `name`."""
        self.nodes[name] = self.cluster.add_node(
            num_cpus=SLOTS, resources={"slot": SLOTS}, node_ip_address="127.0.0.1", labels={"corral/name": name}
        )
        self.cluster.wait_for_nodes()

    def remove(self, name: str) -> None:
        """Lose node `name` as a machine is lost."""
        self.cluster.remove_node(self.nodes.pop(name), allow_graceful=False)

    def close(self) -> None:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        self.cluster.shutdown()
        shutil.rmtree(self.tmp, ignore_errors=True)


class Loop:
    """A store and a scheduler over one executor, driven a round every ROUND_S."""

    def __init__(self, tmp: Path, executor: Any, placer: str) -> None:
        self.store = Store(f"sqlite:///{tmp / 'db.sqlite'}")
        self.executor = executor
        self.sched = Scheduler(self.store, executor, policies.get("priority", placer=placer), grace=15)

    def submit(self, argv: list[str], gpus: int, **extra: Any) -> tuple[int, float]:
        spec = {
            "name": "probe",
            "entrypoint": " ".join([sys.executable, str(PROBE), *argv]),
            "workdir": str(ROOT),
            "env": {"OMP_NUM_THREADS": "1"},
            "resources": {"gpus": gpus},
            **extra,
        }
        t0 = time.time()
        job = self.store.add_job(JobSpec.model_validate(spec).model_dump(mode="json"), "bench").id
        self.sched.round()
        return job, t0

    def until(self, done: Callable[[], Any], timeout: float = 180) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            got = done()
            if got:
                return got
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out; jobs: {[(j.id, j.state, j.reason) for j in self.store.list_jobs()]}")
            self.sched.round()
            time.sleep(ROUND_S)

    def state(self, job: int) -> str:
        return self.store.get_job(job).state

    def runs(self, job: int) -> list[dict[str, list[int]]]:
        return [e.data["allocation"] for e in self.store.events(job) if e.dst == "RUNNING"]


def ups(out: Path) -> dict[int, float]:
    """Rank -> when its (latest) process started its user code."""
    seen: dict[int, float] = {}
    for p in out.glob("up-*"):
        rank = int(p.name.split("-")[1])
        t = float(p.read_text().split()[0])
        seen[rank] = max(seen.get(rank, 0.0), t)
    return seen


def steps(out: Path, rank: int) -> list[tuple[float, int, int]]:
    """(time, restored_from, step) lines of one rank."""
    path = out / f"steps-{rank}"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3:
            rows.append((float(parts[0]), int(parts[1]), int(parts[2])))
    return rows


def finish(loop: Loop, job: int) -> None:
    """Drive rounds until the job ends; it must succeed."""
    loop.until(lambda: loop.state(job) in ("SUCCEEDED", "FAILED", "CANCELLED"), timeout=180)
    assert loop.state(job) == "SUCCEEDED", loop.executor.log_tail(job, 20)


def start_trial(loop: Loop, out: Path) -> float:
    """Submit -> every rank of a 2-rank job running its user code."""
    job, t0 = loop.submit([str(out)], gpus=2)
    started = loop.until(lambda: (u := ups(out)) and len(u) == 2 and u)
    finish(loop, job)
    return max(started.values()) - t0


def gang_trial(loop: Loop, out: Path) -> tuple[float, dict[str, list[int]]]:
    """Submit -> first optimizer step done on all 4 ranks, and where the ranks ran."""
    job, t0 = loop.submit([str(out), "--steps", "3", "--sleep", "0"], gpus=4)
    firsts = loop.until(lambda: (f := [steps(out, r)[:1] for r in range(4)]) and all(f) and f)
    finish(loop, job)
    return max(f[0][0] for f in firsts) - t0, loop.runs(job)[0]


def recovery_trial(loop: Loop, out: Path, cluster: FakeCluster | None) -> dict[str, Any]:
    """Lose a node (ray) or SIGKILL a rank (local) mid-run: time to RUNNING again, to the first step, steps redone."""
    argv = [str(out), "--steps", "60", "--sleep", "0.1", "--checkpoint-every", str(CHECKPOINT_EVERY)]
    job, _ = loop.submit(argv, gpus=2, max_restarts=1)
    loop.until(lambda: len(steps(out, 0)) >= 2 * CHECKPOINT_EVERY + 5, timeout=120)
    victim = ""
    if cluster is not None:
        victim = sorted(loop.store.get_job(job).allocation)[-1]
        t_loss = time.time()
        cluster.remove(victim)
    else:
        pid = int(max(out.glob("up-1-*"), key=lambda p: p.stat().st_mtime).read_text().split()[1])
        t_loss = time.time()
        os.kill(pid, signal.SIGKILL)
    try:
        loop.until(lambda: len(loop.runs(job)) >= 2 and loop.state(job) == "RUNNING", timeout=120)
        t_running = time.time()
        resumed = loop.until(lambda: [r for r in steps(out, 0) if r[0] > t_loss and r[1] > 0], timeout=120)
        # The gang keeps stepping until the loss is seen and it is stopped: count every step of the first run.
        last_before = max(s for t, _, s in steps(out, 0) if t < resumed[0][0])
        finish(loop, job)
    finally:
        if cluster is not None:
            cluster.add(victim)
    record = loop.store.get_job(job)
    return {
        "to_running_s": t_running - t_loss,
        "to_first_step_s": resumed[0][0] - t_loss,
        "steps_redone": last_before - resumed[0][1],
        "resumed_from": resumed[0][1],
        "restarts_used": record.restarts,
        "runs": loop.runs(job),
        "lost_node": victim,
    }


def summary(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--gang-trials", type=int, default=3)
    p.add_argument("--loss-trials", type=int, default=3)
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="corral-bench-exec-"))
    results: dict[str, Any] = {
        "command": "python benchmarks/ray_executor.py " + " ".join(sys.argv[1:]),
        "versions": {"ray": version("ray"), "torch": version("torch"), "cpus": os.cpu_count()},
        "executors": {},
    }
    with console.status("starting a fake Ray cluster (head + 4 nodes)"):
        cluster = FakeCluster()
    try:
        for kind in ("local", "ray"):
            home = tmp / kind
            home.mkdir(parents=True)
            if kind == "local":
                ex: Any = LocalExecutor(len(NODES) * SLOTS, home / "home")
            else:
                ex = RayExecutor(home / "home", address=cluster.cluster.address, placement_timeout=30)
            loop = Loop(home, ex, "spread" if kind == "ray" else "pack")
            with console.status(f"{kind}: submit -> all ranks running x{args.trials}"):
                start = [start_trial(loop, home / f"start-{i}") for i in range(args.trials)]
            with console.status(f"{kind}: 4-rank gang, submit -> first step x{args.gang_trials}"):
                gangs = [gang_trial(loop, home / f"gang-{i}") for i in range(args.gang_trials)]
                gang, where = [g[0] for g in gangs], [g[1] for g in gangs]
            with console.status(f"{kind}: {'node lost' if kind == 'ray' else 'rank killed'} x{args.loss_trials}"):
                lose = cluster if kind == "ray" else None
                loss = [recovery_trial(loop, home / f"loss-{i}", lose) for i in range(args.loss_trials)]
            if isinstance(ex, RayExecutor):
                ex.close()
            results["executors"][kind] = {
                "submit_to_running_s": summary(start) | {"trials": start},
                "gang4_submit_to_first_step_s": summary(gang) | {"trials": gang, "placements": where},
                "recovery": {
                    "what": "node removed" if kind == "ray" else "rank SIGKILLed",
                    "to_running_s": summary([r["to_running_s"] for r in loss]),
                    "to_first_step_s": summary([r["to_first_step_s"] for r in loss]),
                    "steps_redone": [r["steps_redone"] for r in loss],
                    "trials": loss,
                },
            }
    finally:
        cluster.close()
        shutil.rmtree(tmp, ignore_errors=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    show(results)


def show(results: dict[str, Any]) -> None:
    local, ray = results["executors"]["local"], results["executors"]["ray"]
    table = Table(title="local vs ray executor (median, min-max, seconds)")
    for col in ("measure", "local", "ray", "ray / local"):
        table.add_column(col)

    def cell(s: dict[str, float]) -> str:
        return f"{s['median']:.2f} ({s['min']:.2f}-{s['max']:.2f})"

    for label, pick in (
        ("submit -> all 2 ranks running", lambda e: e["submit_to_running_s"]),
        ("4-rank gang: submit -> first step", lambda e: e["gang4_submit_to_first_step_s"]),
        ("loss -> RUNNING again", lambda e: e["recovery"]["to_running_s"]),
        ("loss -> first step again", lambda e: e["recovery"]["to_first_step_s"]),
    ):
        a, b = pick(local), pick(ray)
        table.add_row(label, cell(a), cell(b), f"{b['median'] / a['median']:.2f}")
    table.add_row("steps redone", str(local["recovery"]["steps_redone"]), str(ray["recovery"]["steps_redone"]), "")
    console.print(table)
    console.print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
