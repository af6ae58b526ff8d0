"""Simulator speed at scale: a 100,000-job synthetic trace on 1,024 devices (256 nodes x 4).

Runs the same trace under `fifo` (the baseline, measured in the same run) and
`tiresias`, and reports wall time, simulated events per second (arrivals +
completions) and scheduling rounds per second, then the ratio tiresias / fifo.
Goal: fifo <= 60 s wall.

Rounds: by default every 60 s of simulated time only (`periodic`). With
`--modes periodic,event` the run is repeated with a round after every arrival
and completion as well (`corral simulate`'s default): that is about two more
policy calls per job, and a policy call costs O(active jobs), so expect it to
be several times slower at this scale.

    .venv/bin/python benchmarks/sim_scale.py [--jobs 100000] [--cluster 256x4] [--quick]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from corral.sched import policies
from corral.sim.engine import SimConfig, simulate
from corral.sim.metrics import compute_metrics
from corral.sim.run import parse_cluster
from corral.sim.traces import load_trace

BASELINE = "fifo"
GOAL_S = 60.0
RESULTS = Path(__file__).parent / "results" / "sim_scale.json"


def main() -> None:
    """Parse arguments, run every (mode, policy), print a table and write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--cluster", default="256x4")
    ap.add_argument("--policies", default="fifo,tiresias")
    ap.add_argument("--modes", default="periodic", help="comma-separated: periodic, event")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="10,000 jobs")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    jobs_n = 10_000 if args.quick else args.jobs
    cluster = parse_cluster(args.cluster)
    names = [p.strip() for p in args.policies.split(",") if p.strip()]
    if BASELINE not in names:
        names.insert(0, BASELINE)
    console = Console()

    t0 = time.perf_counter()
    jobs = load_trace(f"synthetic:{jobs_n}:{args.seed}", devices=cluster.total_devices)
    load_s = time.perf_counter() - t0
    console.print(f"synthetic:{jobs_n}:{args.seed} generated in {load_s:.2f} s; cluster {args.cluster}")

    runs = []
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        config = SimConfig(event_rounds=(mode == "event"))
        for name in names:
            r = simulate(jobs, policies.get(name), cluster, config)
            m = compute_metrics(r)
            runs.append({
                "mode": mode, "policy": name, "wall_s": round(r.wall_s, 2), "events": r.events,
                "rounds": r.rounds, "events_per_s": round(r.events / r.wall_s), "rounds_per_s": round(r.rounds / r.wall_s),
                "finished": m.finished, "avg_jct_s": m.avg_jct, "avg_wait_s": m.avg_queueing_delay, "makespan_s": m.makespan, "utilisation": m.utilisation,
                "simulated_s": r.end_time,
            })  # fmt: skip
            console.print(f"{mode:>8} {name:<10} {r.wall_s:7.1f} s wall, {r.events:,} events, {r.rounds:,} rounds")

    table = Table(title=f"Simulator scale: {jobs_n:,} synthetic jobs on {args.cluster} ({cluster.total_devices} devices)",
                  title_justify="left")
    for col in ("run", "wall (s)", "events/s", "rounds/s", f"x {BASELINE}", "avg JCT (s)", "avg wait (s)"):
        table.add_column(col, justify="left" if col == "run" else "right", no_wrap=col == "run")
    ratios = {}
    for run in runs:
        base = next(x for x in runs if x["mode"] == run["mode"] and x["policy"] == BASELINE)
        run["ratio_vs_fifo"] = round(run["wall_s"] / base["wall_s"], 2)
        ratios[f"{run['mode']}/{run['policy']}"] = run["ratio_vs_fifo"]
        table.add_row(f"{run['policy']} ({run['mode']})", f"{run['wall_s']:.1f}", f"{run['events_per_s']:,}",
                      f"{run['rounds_per_s']:,}", f"{run['ratio_vs_fifo']:.2f}", f"{run['avg_jct_s']:,.0f}",
                      f"{run['avg_wait_s']:,.0f}")  # fmt: skip
    console.print(table)
    for mode in {r["mode"] for r in runs}:
        fifo = next(r for r in runs if r["mode"] == mode and r["policy"] == BASELINE)
        verdict = "meets" if fifo["wall_s"] <= GOAL_S else "misses"
        goal = f"{verdict} the {GOAL_S:.0f} s goal" if jobs_n == 100_000 else "(the goal is for 100,000 jobs)"
        console.print(f"{mode}: fifo {fifo['wall_s']:.1f} s {goal}"
                      + "".join(f"; {k.split('/')[1]}/fifo = {v:.2f}" for k, v in ratios.items()
                                if k.startswith(mode + "/") and not k.endswith("/" + BASELINE)))
    doc = {
        "benchmark": "sim_scale", "jobs": jobs_n, "cluster": args.cluster, "devices": cluster.total_devices,
        "seed": args.seed, "trace_generation_s": round(load_s, 2), "goal_fifo_s": GOAL_S, "baseline": BASELINE,
        "runs": runs, "ratios": ratios, "python": platform.python_version(), "machine": platform.machine(),
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
