"""Adaptive batch on the live service: `pollux` against `priority` on the same real jobs, and the simulator's view.

    python benchmarks/adaptive.py [--quick] [--replay]

1. Live, twice in one run: a `corral server` (its own process and home,
   local executor, 4 device slots, 1 s rounds) under `priority`, then a fresh
   one under `pollux`, each gets the same 8 real jobs at the same offsets:
   examples/digits.py with an adaptive batch (initial global batch 32, max
   512, AdaScale LR), elastic 1..4 devices, requesting 1, 2 or 4 of them,
   3-12 epochs' worth of progress. `priority` (the service's default) runs a
   job on its request while others wait, and lends idle devices to elastic
   jobs; `pollux` sizes every job by its goodput model, fitted from the step
   times, noise scale and batch bounds the job reports.
   On this CPU-only machine 4 slots share 2 cores, so each step sleeps the
   emulated accelerator time of a device: `--step-sleep` s per step plus
   `--sample-sleep` s per sample of the worker's batch (a step's time grows
   with its local batch, as on an accelerator; a CPU's neighbours would also
   slow it down, a GPU's do not).
2. Simulated: corral.sim replays the same arrivals (the submit times the
   service recorded) under the same policy, each job's progress rate being
   the goodput of the model measured live: the throughput parameters fitted
   (corral.goodput) from the step times the job reported in both live runs,
   at each configuration it ran, and its noise scale by progress. The
   simulated scheduler sees a model fitted only from the replica counts the
   job has run on so far, as the live one does. The start and restart
   overhead is the median per-run fixed cost measured live under that
   policy (start-up, checkpoint, exit: running time not spent in steps;
   it grows when several processes start at once on the 2 cores).

Prints per-job JCT (live and simulated) per policy, average JCT and makespan,
and the ratio pollux / priority (goal: average JCT <= 0.85). Writes
benchmarks/results/adaptive.json, adaptive.png and the live runs themselves
(adaptive_raw.json), which `--replay` simulates and reports again without
running anything. A full run takes 6-8 minutes on 2 cores (both policies,
one after the other); `--quick`: 6 jobs with half the epochs (about 4).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from bisect import bisect_right
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from unittest import mock

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from live_workload import run_workload  # noqa: E402

from corral.goodput import GoodputModel, ThroughputParams, fit_throughput  # noqa: E402
from corral.sched import policies  # noqa: E402
from corral.sched.types import Allocation, ClusterView  # noqa: E402
from corral.sim import engine  # noqa: E402
from corral.sim.engine import SimConfig  # noqa: E402
from corral.sim.traces import TraceJob  # noqa: E402
from corral.sim.work import Packing  # noqa: E402

DEVICES = 4
POLICIES = ("priority", "pollux")  # the baseline first
DIGITS = ROOT / "examples" / "digits.py"
TRAIN_SAMPLES = 1437  # digits' training split (examples/digits.py: 80% of 1797)
INIT_BATCH, MAX_BATCH = 32, 512
# name, offset (s), devices requested, epochs (of progress at INIT_BATCH); every job is elastic 1..4
WORKLOAD: list[tuple[str, float, int, int]] = [
    ("a-4x12", 0, 4, 12),
    ("b-2x8", 0, 2, 8),
    ("c-1x6", 10, 1, 6),
    ("d-4x8", 20, 4, 8),
    ("e-2x10", 30, 2, 10),
    ("f-1x4", 45, 1, 4),
    ("g-4x6", 60, 4, 6),
    ("h-2x3", 75, 2, 3),
]
QUICK = {"a-4x12", "b-2x8", "c-1x6", "d-4x8", "e-2x10", "g-4x6"}


def workload(quick: bool) -> list[tuple[str, float, int, int]]:
    """The jobs of a full run, or of a --quick one (6 of them, half the epochs)."""
    if not quick:
        return list(WORKLOAD)
    return [(n, off, g, max(2, ep // 2)) for n, off, g, ep in WORKLOAD if n in QUICK]


def spec(name: str, gpus: int, epochs: int, step_sleep: float, sample_sleep: float) -> dict[str, Any]:
    """The job's spec: digits with an adaptive batch, elastic 1..4, `gpus` requested."""
    return {
        "name": name,
        "workdir": str(ROOT),
        "entrypoint": (
            f"{sys.executable} {DIGITS} --epochs {epochs} --adaptive --batch-size {INIT_BATCH} "
            f"--max-batch {MAX_BATCH} --lr-scaling adascale "
            f"--step-sleep {step_sleep} --sample-sleep {sample_sleep}"
        ),
        "resources": {"gpus": gpus, "min_gpus": 1, "max_gpus": DEVICES},
        "env": {"OMP_NUM_THREADS": "1"},
    }


# -- what the live runs measured ---------------------------------------------------------------------


def reports(job: dict[str, Any]) -> list[dict[str, float]]:
    """The job's throughput reports (those with a step time), each with the step it was made at."""
    return [dict(m["values"], step=m["step"]) for m in job["metrics"] if "step_time" in m["values"]]


def step_rows(jobs: Sequence[dict[str, Any]]) -> list[tuple[int, int, int, float]]:
    """(nodes, replicas, local batch, median step time) of every configuration the jobs reported."""
    times: dict[tuple[int, int, int], list[float]] = {}
    for job in jobs:
        for v in reports(job):
            if "local_batch" in v and "replicas" in v:
                key = (int(v.get("nodes", 1)), int(v["replicas"]), int(v["local_batch"]))
                times.setdefault(key, []).append(float(v["step_time"]) / max(1.0, v.get("accum_steps", 1.0)))
    return sorted((*k, statistics.median(t)) for k, t in times.items())


def noise_by_progress(jobs: Sequence[dict[str, Any]], bins: int = 10) -> list[float]:
    """The median noise scale the jobs reported in each tenth of their progress (gaps filled from neighbours)."""
    got: list[list[float]] = [[] for _ in range(bins)]
    for job in jobs:
        progress = 0.0
        for v in reports(job):
            progress = float(v.get("progress", progress))
            phi = v.get("noise_scale")
            if phi is not None and math.isfinite(phi) and phi >= 0:
                got[min(bins - 1, int(progress * bins))].append(float(phi))
    med = [statistics.median(g) if g else None for g in got]
    known = [p for p in med if p is not None]
    if not known:
        raise SystemExit("no job reported a noise scale")
    out, last = [], known[0]
    for p in med:
        last = p if p is not None else last
        out.append(last)
    return out


def run_overhead(job: dict[str, Any]) -> float:
    """Seconds per run the job held devices without stepping (start-up, first steps' set-up, checkpoint, exit)."""
    stepping, last = 0.0, 0
    for v in reports(job):
        stepping += max(0, v["step"] - last) * float(v["step_time"])
        last = int(v["step"])
    runs = sum(1 for e in job["events"] if e["dst"] == "RUNNING")
    return max(0.0, (job["run_time"] - stepping) / max(1, runs))


# -- the simulator's ground truth for one adaptive job ---------------------------------------------------


class AdaptiveWork:
    """Progress of one adaptive digits job in corral.sim: goodput of its measured model, in samples at M0.

    It is a corral.sim.work.ReportingWork: the rate under an allocation is the
    goodput at the best batch for it (as the job picks its batch), with the
    noise scale of the current tenth of progress; the model the scheduler sees
    is fitted only from the configurations (replica counts) run so far.
    """

    def __init__(
        self,
        job: TraceJob,
        rows: Sequence[tuple[int, int, int, float]],
        phis: Sequence[float],
        epochs: int,
        packing: Packing,
    ) -> None:
        self.job = job
        self.rows = list(rows)
        self.phis = list(phis)
        self.total = float(epochs * TRAIN_SAMPLES)
        self.bounds = [self.total * (i + 1) / len(self.phis) for i in range(len(self.phis))]
        self.params = fit_throughput([tuple(map(float, r)) for r in self.rows])
        self.seen: set[int] = set()
        self._fits: dict[frozenset[int], ThroughputParams | None] = {}
        self.packing = packing
        self.ideal_duration = self._time_alone(job.gpus)

    def _segment(self, done: float) -> int:
        return min(len(self.bounds) - 1, bisect_right(self.bounds, done))

    def _model(self, params: ThroughputParams, phi: float) -> GoodputModel:
        return GoodputModel(params=params, init_batch=INIT_BATCH, max_batch=MAX_BATCH, noise_scale=phi)

    def rate(self, alloc: Allocation, done: float) -> tuple[float, float]:
        """Goodput (samples at M0 per second) on the allocation, until the current tenth of progress ends."""
        i = self._segment(done)
        g = self._model(self.params, self.phis[i]).goodput(alloc.num_nodes, alloc.num_devices)
        return float(g), self.bounds[i]

    def throughput_model(self, alloc: Allocation, done: float) -> GoodputModel | None:
        """The model fitted from the replica counts run so far, with the current noise scale."""
        if alloc:
            self.seen.add(alloc.num_devices)
        key = frozenset(self.seen)
        if key not in self._fits:
            rows = [tuple(map(float, r)) for r in self.rows if r[1] in key]
            try:
                self._fits[key] = fit_throughput(rows) if rows else None
            except ValueError:
                self._fits[key] = None
        params = self._fits[key]
        return None if params is None else self._model(params, self.phis[self._segment(done)])

    def max_gpus_now(self) -> int:
        """Any count up to the job's maximum."""
        return self.job.max_gpus

    def _time_alone(self, n: int) -> float:
        nodes = self.packing.min_nodes(n)
        start = [0.0, *self.bounds[:-1]]
        return sum(
            (end - lo) / float(self._model(self.params, phi).goodput(nodes, n))
            for lo, end, phi in zip(start, self.bounds, self.phis, strict=True)
        )


def simulate_like(
    live: list[dict[str, Any]], everything: Sequence[dict[str, Any]], policy: str, overhead: float
) -> dict[str, float]:
    """The simulator's JCT of every job of `live` under `policy`; models from the same job in `everything`."""
    cluster = ClusterView.uniform(1, DEVICES)
    packing = Packing(cluster)
    trace, works = [], {}
    for j in live:
        same = [k for k in everything if k["name"] == j["name"]]
        epochs = int(j["spec"]["entrypoint"].split("--epochs ")[1].split()[0])
        tj = TraceJob(
            id=j["name"],
            submit_time=max(0.0, j["submit_time"] - j["t0"]),
            gpus=j["gpus"],
            min_gpus=j["min_gpus"],
            max_gpus=j["max_gpus"],
            duration=1.0,  # unused: the work model below decides
        )
        trace.append(tj)
        works[tj.id] = AdaptiveWork(tj, step_rows(same), noise_by_progress(same), epochs, packing)
    cfg = SimConfig(
        round_s=1.0, restart_overhead_s=overhead, start_overhead=True, event_rounds=True, cross_node_penalty=0.0
    )
    # corral.sim builds a plain job's work itself (rigid: linear in devices); these jobs bring their own.
    with mock.patch.object(engine, "build_work", lambda tj, _packing, _penalty: works[tj.id]):
        sim = engine.Simulator(trace, policies.get(policy), cluster, cfg)
    result = sim.run()
    return {r.id: (r.finish_time or math.nan) - r.submit_time for r in result.jobs}


# -- the report --------------------------------------------------------------------------------------


def timeline(job: dict[str, Any]) -> list[tuple[float, float, int]]:
    """(start, end, devices) of each run of the job, in seconds from t0."""
    out, start, n = [], None, 0
    for e in job["events"]:
        t = e["time"] - job["t0"]
        if start is not None:
            out.append((start, t, n))
            start = None
        if e["dst"] == "RUNNING":
            alloc = (e.get("data") or {}).get("allocation") or {}
            start, n = t, sum(len(d) for d in alloc.values())
    return out


def summarise(live: list[dict[str, Any]], sim: dict[str, float], order: Sequence[str]) -> dict[str, Any]:
    """Per-job rows and the averages of one policy, live and simulated."""
    rows = []
    for j in sorted(live, key=lambda j: order.index(j["name"])):
        submit = j["submit_time"] - j["t0"]
        batches = [int(v["global_batch"]) for v in reports(j) if "global_batch" in v]
        rows.append(
            {
                "job": j["name"],
                "requested": j["gpus"],
                "submit": round(submit, 1),
                "live_jct": round(j["end_time"] - j["submit_time"], 2),
                "sim_jct": round(sim[j["name"]], 2),
                "live_end": round(j["end_time"] - j["t0"], 2),
                "sim_end": round(max(0.0, submit) + sim[j["name"]], 2),
                "runs": timeline(j),
                "preemptions": j["preemptions"],
                "resizes": j["resizes"],
                "device_seconds": round(j["attained_service"], 1),
                "global_batch": [min(batches), max(batches)] if batches else None,
            }
        )
    first = min(r["submit"] for r in rows)
    return {
        "jobs": rows,
        "avg_jct_live": statistics.mean(r["live_jct"] for r in rows),
        "avg_jct_sim": statistics.mean(r["sim_jct"] for r in rows),
        "makespan_live": max(r["live_end"] for r in rows) - first,
        "makespan_sim": max(r["sim_end"] for r in rows) - first,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="6 jobs, half the epochs (about 4 minutes)")
    ap.add_argument("--step-sleep", type=float, default=0.04, help="emulated device seconds per step")
    ap.add_argument("--sample-sleep", type=float, default=0.002, help="emulated device seconds per local sample")
    ap.add_argument("--replay", action="store_true", help="simulate and report again from results/adaptive_raw.json")
    args = ap.parse_args()
    console = Console()
    out = ROOT / "benchmarks" / "results"
    raw_path = out / "adaptive_raw.json"
    wall0 = time.monotonic()
    if args.replay:
        raw = json.loads(raw_path.read_text())
    else:
        jobs = workload(args.quick)
        raw = {
            "quick": args.quick,
            "step_sleep": args.step_sleep,
            "sample_sleep": args.sample_sleep,
            "workload": jobs,
            "live": {},
        }
        submissions = [(off, spec(n, g, ep, args.step_sleep, args.sample_sleep)) for n, off, g, ep in jobs]
        for policy in POLICIES:
            raw["live"][policy] = run_workload(
                policy, submissions, console, devices=DEVICES, home_prefix="corral-adapt-"
            )
            console.print(f"live {policy}: done in {time.monotonic() - wall0:.0f} s")
    order = [w[0] for w in raw["workload"]]
    everything = [j for live in raw["live"].values() for j in live]
    # Start-up slows down as more processes start at once on the 2 cores (4-device gangs, several
    # jobs at a time), so each policy's simulation takes the median of its own live runs, as sim_live does.
    overhead = {p: statistics.median(run_overhead(j) for j in raw["live"][p]) for p in POLICIES}
    results: dict[str, Any] = {
        "devices": DEVICES,
        "quick": raw["quick"],
        "step_sleep": raw["step_sleep"],
        "sample_sleep": raw["sample_sleep"],
        "workload": [dict(zip(("job", "offset", "requested", "epochs"), w, strict=True)) for w in raw["workload"]],
        "policies": {},
    }
    for policy in POLICIES:
        live = raw["live"][policy]
        sim = simulate_like(live, everything, policy, overhead[policy])
        results["policies"][policy] = summarise(live, sim, order) | {"overhead_s": overhead[policy]}
    base, new = results["policies"]["priority"], results["policies"]["pollux"]
    for key in ("avg_jct_live", "avg_jct_sim", "makespan_live", "makespan_sim"):
        results[f"ratio_{key}"] = new[key] / base[key]
    results["goal_met"] = results["ratio_avg_jct_live"] <= 0.85
    _print(console, results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "adaptive.json").write_text(json.dumps(results, indent=2))
    if not args.replay:
        raw_path.write_text(json.dumps(raw))
    _plot(results, out / "adaptive.png")
    console.print(f"wrote {out / 'adaptive.json'} and {out / 'adaptive.png'} ({time.monotonic() - wall0:.0f} s)")


def _print(console: Console, results: dict[str, Any]) -> None:
    pols = results["policies"]
    for pol in POLICIES:
        table = Table(title=f"{pol}: JCT (s), live and simulated")
        for col in ("job", "asks", "live", "sim", "sim/live", "runs (devices)", "preempt."):
            table.add_column(col, justify="left" if col == "job" else "right")
        for r in pols[pol]["jobs"]:
            table.add_row(
                r["job"],
                str(r["requested"]),
                f"{r['live_jct']:.1f}",
                f"{r['sim_jct']:.1f}",
                f"{r['sim_jct'] / r['live_jct']:.2f}",
                ",".join(str(n) for _, _, n in r["runs"]),
                str(r["preemptions"]),
            )
        console.print(table)
    summary = Table(title=f"{DEVICES} slots: pollux vs priority")
    for col in ("", "avg JCT live", "avg JCT sim", "makespan live", "makespan sim"):
        summary.add_column(col, justify="right" if col else "left")
    keys = ("avg_jct_live", "avg_jct_sim", "makespan_live", "makespan_sim")
    for pol in POLICIES:
        summary.add_row(pol, *(f"{pols[pol][k]:.1f} s" for k in keys))
    summary.add_row("pollux/priority", *(f"{results[f'ratio_{k}']:.2f}" for k in keys))
    console.print(summary)
    verdict = "met" if results["goal_met"] else "NOT met"
    console.print(
        f"goal pollux/priority average JCT <= 0.85: {verdict} ({results['ratio_avg_jct_live']:.2f} live, "
        f"{results['ratio_avg_jct_sim']:.2f} simulated); per-run fixed cost measured live (the simulated "
        f"start and restart overhead): " + ", ".join(f"{pol} {pols[pol]['overhead_s']:.1f} s" for pol in POLICIES)
    )


def _plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pols = results["policies"]
    fig = plt.figure(figsize=(14, 8))
    grid = fig.add_gridspec(2, 2, height_ratios=[1, 1])
    ax = fig.add_subplot(grid[0, :])
    names = [r["job"] for r in pols["priority"]["jobs"]]
    xs = range(len(names))
    bars = [
        ("priority", "live", "tab:blue", 1.0),
        ("priority", "sim", "tab:blue", 0.45),
        ("pollux", "live", "tab:orange", 1.0),
        ("pollux", "sim", "tab:orange", 0.45),
    ]
    w = 0.2
    for i, (pol, what, color, alpha) in enumerate(bars):
        ax.bar(
            [x + (i - 1.5) * w for x in xs],
            [r[f"{what}_jct"] for r in pols[pol]["jobs"]],
            w,
            color=color,
            alpha=alpha,
            label=f"{pol} {'live' if what == 'live' else 'simulated'}",
        )
    ax.set_xticks(list(xs), [f"{n}\n(asks {r['requested']})" for n, r in zip(names, pols["priority"]["jobs"])])
    ax.set_ylabel("JCT (s)")
    ax.set_title(
        f"average JCT pollux/priority: {results['ratio_avg_jct_live']:.2f} live, "
        f"{results['ratio_avg_jct_sim']:.2f} simulated; makespan {results['ratio_makespan_live']:.2f} live"
    )
    ax.legend(ncols=4, fontsize=8)
    cmap = plt.get_cmap("viridis", DEVICES)
    for col, pol in enumerate(POLICIES):
        ax = fig.add_subplot(grid[1, col])
        for y, r in enumerate(pols[pol]["jobs"]):
            ax.plot([r["submit"], r["live_end"]], [y, y], color="0.8", lw=1, zorder=0)
            for start, end, n in r["runs"]:
                ax.barh(y, end - start, left=start, height=0.2 + 0.15 * n, color=cmap(n - 1), edgecolor="k", lw=0.3)
        ax.set_yticks(range(len(names)), names)
        ax.invert_yaxis()
        ax.set_xlabel("seconds (grey: waiting; bar height and colour: devices held)")
        ax.set_title(
            f"{pol} live: avg JCT {pols[pol]['avg_jct_live']:.0f} s, makespan {pols[pol]['makespan_live']:.0f} s"
        )
    handles = [plt.Rectangle((0, 0), 1, 1, color=cmap(n - 1)) for n in range(1, DEVICES + 1)]
    fig.legend(
        handles, [f"{n} device{'s' if n > 1 else ''}" for n in range(1, DEVICES + 1)], loc="lower center", ncols=4
    )
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
