"""The simulator against the live service on the same workload: does what it predicts run?

    python benchmarks/sim_live.py [--policies priority,tiresias] [--sleep 0.1] [--replay]

1. Live: a `corral server` (its own process, local executor, 4 device
   slots, 1 s rounds) gets 11 real jobs (examples/digits.py with varied
   sizes, epochs and priorities, one of them elastic 1-4) at fixed offsets.
   On this CPU-only machine the 4 slots share 2 cores, so each step adds
   `--sleep` seconds of emulated accelerator time (a GPU's step does not
   slow its neighbours; a CPU's would).
2. Profiles: from those very jobs, each job's step time per configuration
   (what the Job API reported), its number of steps, and the per-run fixed
   cost (start-up, checkpoint, exit: running time not spent in steps).
3. Simulated: the same arrivals (the submit times the service recorded) and
   job sizes, duration = steps x step time, restart/start overhead = the
   median per-run cost, same policy.

Prints per-job JCT, sim vs live, the average JCT ratio and whether the order
of completion is the same (jobs that ended live within one 1 s round of each
other count as ending together). Goal: within 10%, same order. Writes
benchmarks/results/sim_live.json, sim_live.png and the live runs themselves
(sim_live_raw.json: every job with its events and reports), which
`--replay` simulates again without running anything.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from live_workload import run_workload  # noqa: E402

from corral.sched import policies  # noqa: E402
from corral.sched.types import ClusterView  # noqa: E402
from corral.sim.engine import SimConfig, simulate  # noqa: E402
from corral.sim.traces import TraceJob  # noqa: E402

DEVICES = 4
DIGITS = ROOT / "examples" / "digits.py"
# name, offset (s), gpus, min, max, epochs, priority
WORKLOAD = [
    ("a-1x3", 0, 1, 1, 1, 3, 0),
    ("b-2x4", 0, 2, 2, 2, 4, 0),
    ("c-1x2", 4, 1, 1, 1, 2, 0),
    ("d-elastic", 8, 2, 1, 4, 6, 0),
    ("e-2x3-p5", 16, 2, 2, 2, 3, 5),
    ("f-1x2", 22, 1, 1, 1, 2, 0),
    ("g-2x2", 28, 2, 2, 2, 2, 0),
    ("h-4x3-p10", 36, 4, 4, 4, 3, 10),
    ("i-1x3", 44, 1, 1, 1, 3, 0),
    ("j-2x2", 50, 2, 2, 2, 2, 1),
    ("k-1x2-p2", 56, 1, 1, 1, 2, 2),
]


def spec(name: str, gpus: int, lo: int, hi: int, epochs: int, priority: int, sleep: float) -> dict[str, Any]:
    """The job's spec: digits at 32 samples per worker, `sleep` s of emulated device time per step."""
    return {
        "name": name,
        "workdir": str(ROOT),
        "priority": priority,
        "entrypoint": f"{sys.executable} {DIGITS} --epochs {epochs} --step-sleep {sleep} --checkpoint-every 10",
        "resources": {"gpus": gpus, "min_gpus": lo, "max_gpus": hi},
        "env": {"OMP_NUM_THREADS": "1"},
    }


def run_live(policy: str, sleep: float, console: Console) -> list[dict[str, Any]]:
    """Submit the workload to a live server and return every job with its events and metrics."""
    submissions = [(w[1], spec(w[0], *w[2:], sleep)) for w in WORKLOAD]
    return run_workload(policy, submissions, console, devices=DEVICES, home_prefix="corral-simlive-")


def profile(job: dict[str, Any]) -> dict[str, float]:
    """A live job's work (seconds at its requested size) and fixed cost per run, from its own reports.

    Each report holds the steps since the previous one, at `replicas` workers with
    a median `step_time`. Work in samples is steps x replicas (the local batch is
    fixed); steps run twice after a resume from an older checkpoint count once.
    """
    g = job["gpus"]
    steps_at: dict[int, float] = {}
    times: dict[int, list[float]] = {}
    last = 0
    for m in job["metrics"]:
        v = m["values"]
        if "step_time" in v:  # the steps since the previous report (job.log lines in between do not count)
            n = int(v.get("replicas", g))
            times.setdefault(n, []).append(float(v["step_time"]))
            steps_at[n] = steps_at.get(n, 0.0) + max(0, m["step"] - last)
            last = m["step"]
    if not times:
        raise SystemExit(f"job {job['name']} reported no step times")
    step_time = {n: statistics.median(ts) for n, ts in times.items()}
    ref = g if g in step_time else min(step_time, key=lambda n: abs(n - g))
    samples = sum(k * n for n, k in steps_at.items())
    work = samples / g * step_time[ref]  # seconds at the requested size
    stepping = sum(k * step_time[n] for n, k in steps_at.items())
    runs = sum(1 for e in job["events"] if e["dst"] == "RUNNING")
    return {"work": work, "runs": runs, "overhead": max(0.0, (job["run_time"] - stepping) / max(1, runs))}


def simulate_like(live: list[dict[str, Any]], policy: str) -> dict[str, float]:
    """The simulator's JCT of every job, from the profiles measured live and the arrivals as they happened."""
    profiles = {j["name"]: profile(j) for j in live}
    overhead = statistics.median(p["overhead"] for p in profiles.values())
    # The submit times the live service recorded (a few ms after the planned offsets, in the order they
    # came): with the planned ones, jobs planned at the same instant tie, and a policy's tie-break (which
    # of two equal jobs to preempt) then differs from what it did live.
    submitted = {j["name"]: j["submit_time"] - j["t0"] for j in live}
    trace = []
    for name, _, g, lo, hi, _, pr in WORKLOAD:
        p = profiles[name]
        trace.append(
            TraceJob(
                id=name,
                submit_time=max(0.0, submitted[name]),
                gpus=g,
                min_gpus=lo,
                max_gpus=hi,
                duration=max(1.0, p["work"]),
                priority=pr,
            )
        )
    cfg = SimConfig(
        round_s=1.0, restart_overhead_s=overhead, start_overhead=True, event_rounds=True, cross_node_penalty=0.0
    )
    result = simulate(trace, policies.get(policy), ClusterView.uniform(1, DEVICES), cfg)
    return {r.id: (r.finish_time or 0.0) - r.submit_time for r in result.jobs} | {"_overhead": overhead}


TIE_S = 1.0  # one round: jobs that end within it live ended "at once", in whichever order the executor saw


def same_order(rows: list[dict[str, Any]]) -> bool:
    """True when every two jobs that ended more than a round apart live end in the same order simulated."""
    return all(a["sim_end"] <= b["sim_end"] for a in rows for b in rows if a["live_end"] + TIE_S < b["live_end"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policies", default="priority,tiresias")
    ap.add_argument("--sleep", type=float, default=0.1, help="emulated device seconds per step")
    ap.add_argument(
        "--replay", action="store_true", help="simulate again from the live runs saved in results/sim_live_raw.json"
    )
    args = ap.parse_args()
    console = Console()
    results: dict[str, Any] = {"devices": DEVICES, "sleep": args.sleep, "policies": {}}
    raw_path = ROOT / "benchmarks" / "results" / "sim_live_raw.json"
    raw: dict[str, Any] = json.loads(raw_path.read_text()) if args.replay else {}
    for policy in args.policies.split(","):
        if args.replay:
            live = raw[policy]
        else:
            live = raw[policy] = run_live(policy, args.sleep, console)
        sim = simulate_like(live, policy)
        offsets = {w[0]: w[1] for w in WORKLOAD}
        rows = []
        for j in live:
            t_submit = j["submit_time"] - j["t0"]
            live_jct = j["end_time"] - j["submit_time"]
            rows.append(
                {
                    "job": j["name"],
                    "submit": round(t_submit, 1),
                    "offset": offsets[j["name"]],
                    "live_jct": round(live_jct, 2),
                    "sim_jct": round(sim[j["name"]], 2),
                    "live_end": j["end_time"] - j["t0"],
                    "sim_end": max(0.0, t_submit) + sim[j["name"]],
                    "preemptions": j["preemptions"],
                    "resizes": j["resizes"],
                }
            )
        rows.sort(key=lambda r: r["offset"])
        avg_live = statistics.mean(r["live_jct"] for r in rows)
        avg_sim = statistics.mean(r["sim_jct"] for r in rows)
        live_order = [r["job"] for r in sorted(rows, key=lambda r: r["live_end"])]
        sim_order = [r["job"] for r in sorted(rows, key=lambda r: r["sim_end"])]
        table = Table(title=f"{policy}: JCT (s), simulated vs live")
        for col in ("job", "live", "sim", "sim/live", "preempt.", "resizes"):
            table.add_column(col, justify="right" if col != "job" else "left")
        for r in rows:
            table.add_row(
                r["job"],
                f"{r['live_jct']:.1f}",
                f"{r['sim_jct']:.1f}",
                f"{r['sim_jct'] / r['live_jct']:.2f}",
                str(r["preemptions"]),
                str(r["resizes"]),
            )
        table.add_row("average", f"{avg_live:.1f}", f"{avg_sim:.1f}", f"{avg_sim / avg_live:.2f}", "", "")
        console.print(table)
        same = same_order(rows)
        console.print(
            f"order of completion {'the same' if same else 'differs'}: live {live_order}"
            + ("" if same else f", sim {sim_order}")
        )
        console.print(f"per-run fixed cost used as the restart overhead: {sim['_overhead']:.2f} s")
        results["policies"][policy] = {
            "jobs": rows,
            "avg_live": avg_live,
            "avg_sim": avg_sim,
            "ratio": avg_sim / avg_live,
            "same_order": same,
            "live_order": live_order,
            "sim_order": sim_order,
            "overhead_s": sim["_overhead"],
        }
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "sim_live.json").write_text(json.dumps(results, indent=2))
    if not args.replay:
        raw_path.write_text(json.dumps(raw))  # every live job with its events and reports, for --replay
    _plot(results, out / "sim_live.png")
    console.print(f"wrote {out / 'sim_live.json'} and {out / 'sim_live.png'}")


def _plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pols = list(results["policies"])
    fig, axes = plt.subplots(1, len(pols), figsize=(6 * len(pols), 4), squeeze=False)
    for ax, pol in zip(axes[0], pols, strict=True):
        rows = results["policies"][pol]["jobs"]
        xs = range(len(rows))
        ax.bar([x - 0.2 for x in xs], [r["live_jct"] for r in rows], 0.4, label="live")
        ax.bar([x + 0.2 for x in xs], [r["sim_jct"] for r in rows], 0.4, label="simulated")
        ax.set_xticks(list(xs), [r["job"] for r in rows], rotation=45, ha="right")
        ratio = results["policies"][pol]["ratio"]
        ax.set_title(f"{pol}: average JCT sim/live = {ratio:.2f}")
        ax.set_ylabel("JCT (s)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
