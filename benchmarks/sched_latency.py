"""Decision time of one scheduling round for every registered policy.

Workload: 1,000 active jobs (about half running, the rest waiting; sizes 1, 2,
4, 8 or 16 devices; a third elastic with their own goodput model) on 256 nodes
x 4 devices. Each policy decides the same round several times; we report the
median, the first (cold) round, and the ratio to `fifo`, the baseline measured
in the same run. Goals: <= 10 ms per round, <= 100 ms for pollux.

    .venv/bin/python benchmarks/sched_latency.py [--rounds 9] [--jobs 1000]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import random
import statistics
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from corral import goodput
from corral.goodput import DEFAULT_MODEL, GoodputModel
from corral.sched import policies
from corral.sched.placement import get_placer
from corral.sched.types import ClusterView, JobView

GOAL_MS = {"pollux": 100.0}
DEFAULT_GOAL_MS = 10.0
BASELINE = "fifo"
RESULTS = Path(__file__).parent / "results" / "sched_latency.json"


def make_round(num_jobs: int, num_nodes: int, per_node: int, seed: int = 0) -> tuple[float, list[JobView], ClusterView]:
    """A busy cluster: jobs placed in submit order until it is full, the rest waiting."""
    rng = random.Random(seed)
    cluster = ClusterView.uniform(num_nodes, per_node)
    now = 100_000.0
    specs = []
    for i in range(num_jobs):
        size = rng.choices([1, 2, 4, 8, 16], weights=[40, 25, 20, 10, 5])[0]
        elastic = rng.random() < 1 / 3
        lo, hi = (max(1, size // 4), size * 2) if elastic else (size, size)
        model = None
        if elastic:  # every elastic job has its own fitted model, as in the live system
            p = DEFAULT_MODEL.params
            model = GoodputModel(
                params=dataclasses.replace(
                    p,
                    alpha_c=p.alpha_c * rng.uniform(0.5, 2),
                    beta_c=p.beta_c * rng.uniform(0.5, 2),
                    alpha_r=p.alpha_r * rng.uniform(0.5, 2),
                ),
                init_batch=DEFAULT_MODEL.init_batch,
                max_batch=DEFAULT_MODEL.max_batch,
                noise_scale=rng.uniform(256, 8192),
                max_local_batch=DEFAULT_MODEL.max_local_batch,
            )
        duration = rng.choice([None, rng.uniform(600, 86_400)])
        specs.append((i, size, lo, hi, model, duration))
    # Fill the cluster in submit order with the pack placer, as a FIFO cluster would be.
    demands = {f"j{i}": size if lo == hi else rng.randint(lo, hi) for i, size, lo, hi, _, _ in specs}
    used = 0
    running_demands = {}
    for job_id, k in demands.items():
        if used + k <= cluster.total_devices * 0.97:
            running_demands[job_id] = k
            used += k
    placed = get_placer("pack").place(running_demands, cluster)
    jobs = []
    for i, size, lo, hi, model, duration in specs:
        job_id = f"j{i}"
        alloc = placed.get(job_id)
        submit = now - rng.uniform(0, 50_000)
        run_time = rng.uniform(0, now - submit) if alloc else 0.0
        jobs.append(
            JobView(
                id=job_id,
                user=f"u{rng.randrange(20)}",
                priority=rng.randrange(4),
                submit_time=submit,
                min_gpus=lo,
                max_gpus=hi,
                gpus=size,
                attained_service=run_time * size,
                progress=None,
                duration_estimate=duration,
                throughput=model,
                allocation=alloc if alloc is not None else JobView.allocation,
                run_time=run_time,
                preemptible=rng.random() < 0.95,
            )
        )
    return now, jobs, cluster


def time_policy(name: str, now: float, jobs: list[JobView], cluster: ClusterView, rounds: int) -> dict:
    """Milliseconds per round for policy `name` (first round cold: caches cleared)."""
    policy = policies.get(name)
    goodput._TABLES.clear()  # measure the cold round honestly
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        policy.schedule(now, jobs, cluster)
        times.append((time.perf_counter() - t0) * 1e3)
    goal = GOAL_MS.get(name, DEFAULT_GOAL_MS)
    median = statistics.median(times)
    return {
        "median_ms": round(median, 3),
        "min_ms": round(min(times), 3),
        "first_ms": round(times[0], 3),
        "goal_ms": goal,
        "meets_goal": median <= goal,
    }


def main() -> None:
    """Run the benchmark, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--nodes", type=int, default=256)
    parser.add_argument("--per-node", type=int, default=4)
    args = parser.parse_args()

    now, jobs, cluster = make_round(args.jobs, args.nodes, args.per_node)
    running = sum(1 for j in jobs if j.allocation)
    results = {name: time_policy(name, now, jobs, cluster, args.rounds) for name in policies.available()}
    base = results[BASELINE]["median_ms"]
    for r in results.values():
        r["ratio_to_fifo"] = round(r["median_ms"] / base, 2) if base > 0 else None

    table = Table(
        title=f"Scheduling round: {args.jobs} jobs ({running} running) on {args.nodes}x{args.per_node} devices, "
        f"median of {args.rounds}"
    )
    for col in ("policy", "median ms", "min ms", "first (cold) ms", f"x {BASELINE}", "goal ms", "ok"):
        table.add_column(col, justify="left" if col == "policy" else "right")
    for name, r in results.items():
        table.add_row(
            name,
            f"{r['median_ms']:.2f}",
            f"{r['min_ms']:.2f}",
            f"{r['first_ms']:.2f}",
            f"{r['ratio_to_fifo']:.2f}",
            f"{r['goal_ms']:.0f}",
            "[green]yes[/]" if r["meets_goal"] else "[red]no[/]",
        )
    Console().print(table)

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": "sched_latency",
        "baseline": BASELINE,
        "jobs": args.jobs,
        "running": running,
        "nodes": args.nodes,
        "devices_per_node": args.per_node,
        "rounds": args.rounds,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "policies": results,
    }
    RESULTS.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
