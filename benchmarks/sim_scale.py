"""Simulator speed at scale: a 100,000-job synthetic trace on 1,024 devices (256 nodes x 4).

Runs the trace under `fifo` (the baseline, measured in the same run) and
`tiresias` in both round modes: `event` (a round after every arrival and
completion as well as every 60 s, `corral simulate`'s default: about three
policy calls per job) and `periodic` (every 60 s only). Reports wall time,
simulated events per second (arrivals + completions), scheduling rounds per
second and the ratio to fifo. Goal: <= 60 s for fifo and tiresias in both modes.

Rounds are incremental (views kept between rounds, policies answering from
their last round, validate and plan looking only at what changed). To show
what that buys, the same run also simulates a smaller trace
(`--reference-jobs`, default 5,000) with full rounds: every view rebuilt and
every decision computed by a fresh policy instance, as before the change;
the `x full` column is full / incremental wall time on that trace. The
figures before the change (this machine, 100k jobs) are kept in BEFORE.

    .venv/bin/python benchmarks/sim_scale.py [--jobs 100000] [--cluster 256x4] [--modes event,periodic] [--quick]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from corral.sched import policies
from corral.sched.types import ClusterView, Decision, JobView
from corral.sim.engine import SimConfig, simulate
from corral.sim.metrics import compute_metrics
from corral.sim.run import parse_cluster
from corral.sim.traces import load_trace

BASELINE = "fifo"
GOAL_S = 60.0
RESULTS = Path(__file__).parent / "results" / "sim_scale.json"
# Wall seconds for 100,000 jobs on 256x4 before rounds were incremental (commit 606c9dd).
BEFORE = {"event/fifo": 382.7, "event/tiresias": 472.4, "periodic/fifo": 45.9, "periodic/tiresias": 36.0}


class FullRounds:
    """A policy decided from scratch every round: a fresh instance, and no `refresh_by` (fresh views)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def schedule(self, now: float, jobs: Sequence[JobView], cluster: ClusterView) -> Decision:
        """The decision of a new instance of the named policy."""
        return policies.get(self.name).schedule(now, jobs, cluster)


def main() -> None:
    """Parse arguments, run every (mode, policy), print a table and write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--cluster", default="256x4")
    ap.add_argument("--policies", default="fifo,tiresias")
    ap.add_argument("--modes", default="event,periodic", help="comma-separated: event, periodic")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="10,000 jobs, 2,000 for the reference")
    ap.add_argument(
        "--reference-jobs", type=int, default=5_000, help="trace size of the full-rounds reference (0: none)"
    )
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    jobs_n = 10_000 if args.quick else args.jobs
    ref_n = min(2_000, args.reference_jobs) if args.quick else args.reference_jobs
    cluster = parse_cluster(args.cluster)
    names = [p.strip() for p in args.policies.split(",") if p.strip()]
    if BASELINE not in names:
        names.insert(0, BASELINE)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    console = Console()

    t0 = time.perf_counter()
    jobs = load_trace(f"synthetic:{jobs_n}:{args.seed}", devices=cluster.total_devices)
    load_s = time.perf_counter() - t0
    console.print(f"synthetic:{jobs_n}:{args.seed} generated in {load_s:.2f} s; cluster {args.cluster}")

    runs = []
    for mode in modes:
        config = SimConfig(event_rounds=(mode == "event"))
        for name in names:
            r = simulate(jobs, policies.get(name), cluster, config)
            m = compute_metrics(r)
            runs.append(
                {
                    "mode": mode, "policy": name, "wall_s": round(r.wall_s, 2), "events": r.events,
                    "rounds": r.rounds, "events_per_s": round(r.events / r.wall_s),
                    "rounds_per_s": round(r.rounds / r.wall_s), "finished": m.finished, "avg_jct_s": m.avg_jct,
                    "avg_wait_s": m.avg_queueing_delay, "makespan_s": m.makespan, "utilisation": m.utilisation,
                    "simulated_s": r.end_time,
                }
            )  # fmt: skip
            console.print(f"{mode:>8} {name:<10} {r.wall_s:7.1f} s wall, {r.events:,} events, {r.rounds:,} rounds")

    reference = []
    if ref_n > 0:
        small = load_trace(f"synthetic:{ref_n}:{args.seed}", devices=cluster.total_devices)
        for mode in modes:
            config = SimConfig(event_rounds=(mode == "event"))
            for name in names:
                fast = simulate(small, policies.get(name), cluster, config)
                full = simulate(small, FullRounds(name), cluster, config)
                same = [(j.first_start, j.finish_time) for j in fast.jobs] == [
                    (j.first_start, j.finish_time) for j in full.jobs
                ]
                reference.append({"mode": mode, "policy": name, "jobs": ref_n,
                                  "incremental_wall_s": round(fast.wall_s, 2),
                                  "full_wall_s": round(full.wall_s, 2), "speedup": round(full.wall_s / fast.wall_s, 1),
                                  "same_schedule": same})  # fmt: skip
                console.print(
                    f"reference {ref_n:,} jobs {mode:>8} {name:<10} full rounds {full.wall_s:6.1f} s, "
                    f"incremental {fast.wall_s:5.1f} s ({full.wall_s / fast.wall_s:.1f}x), same schedule: {same}"
                )

    table = Table(
        title=f"Simulator scale: {jobs_n:,} synthetic jobs on {args.cluster} ({cluster.total_devices} devices)",
        title_justify="left",
    )
    cols = ("run", "wall (s)", "events/s", "rounds/s", f"x {BASELINE}", "avg JCT (s)", "x full", "before (s)")
    for col in cols:
        table.add_column(col, justify="left" if col == "run" else "right", no_wrap=col == "run")
    ratios = {}
    for run in runs:
        key = f"{run['mode']}/{run['policy']}"
        base = next(x for x in runs if x["mode"] == run["mode"] and x["policy"] == BASELINE)
        run["ratio_vs_fifo"] = round(run["wall_s"] / base["wall_s"], 2)
        ratios[key] = run["ratio_vs_fifo"]
        ref = next((x for x in reference if x["mode"] == run["mode"] and x["policy"] == run["policy"]), None)
        before = BEFORE.get(key) if jobs_n == 100_000 and args.cluster == "256x4" else None
        run["before_wall_s"] = before
        table.add_row(f"{run['policy']} ({run['mode']})", f"{run['wall_s']:.1f}", f"{run['events_per_s']:,}",
                      f"{run['rounds_per_s']:,}", f"{run['ratio_vs_fifo']:.2f}", f"{run['avg_jct_s']:,.0f}",
                      f"{ref['speedup']:.1f}" if ref else "-", f"{before:.1f}" if before else "-")  # fmt: skip
    console.print(table)
    for mode in modes:
        walls = {r["policy"]: r["wall_s"] for r in runs if r["mode"] == mode}
        verdict = "meet" if max(walls.values()) <= GOAL_S else "miss"
        goal = f"{verdict} the {GOAL_S:.0f} s goal" if jobs_n == 100_000 else "(the goal is for 100,000 jobs)"
        console.print(f"{mode}: " + ", ".join(f"{p} {w:.1f} s" for p, w in walls.items()) + f" {goal}")
    doc = {
        "benchmark": "sim_scale", "jobs": jobs_n, "cluster": args.cluster, "devices": cluster.total_devices,
        "seed": args.seed, "trace_generation_s": round(load_s, 2), "goal_fifo_s": GOAL_S, "baseline": BASELINE,
        "runs": runs, "ratios": ratios, "reference_full_rounds": reference, "before_wall_s": BEFORE,
        "python": platform.python_version(), "machine": platform.machine(),
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
