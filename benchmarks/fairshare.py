"""Fair share over a simulated day: 3 users of unequal demand on 16 nodes x 4 GPUs.

Users and configured shares: alice 2, bob 1, carol 1 (so 50%, 25%, 25% of the
cluster). Each asks for more than its share, unequally: alice 2x the whole
cluster, bob 0.5x, carol 0.375x (job counts in that proportion), with jobs of
1-8 GPUs lasting 30 min to 3 h, submitted uniformly over the first 21 hours,
priorities mostly 0 (80%), some 1 (15%) and 2 (5%). The same trace runs under
`priority` (the baseline), `fairshare` and `themis`, to completion.

For each policy: each user's share of the device-seconds used in the first
24 hours against its configured share (max deviation, in points and
relative), Jain's fairness index of the ratios share / configured share
(1 = each user exactly at its share), average JCT per user; and ratios to
priority measured in the same run.

    .venv/bin/python benchmarks/fairshare.py [--seed 0] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from corral.sched import policies
from corral.sched.types import ClusterView, Decision, JobView
from corral.sim.engine import SimConfig, simulate
from corral.sim.tracejob import TraceJob

BASELINE = "priority"
POLICIES = ("priority", "fairshare", "themis")
DAY = 86400.0
CLUSTER = "16x4"
SHARES = {"alice": 2, "bob": 1, "carol": 1}
DEMAND = {"alice": 2.0, "bob": 0.5, "carol": 0.375}  # requested device-seconds / (cluster x one day)
SIZES, SIZE_P = (1, 2, 4, 8), (0.4, 0.3, 0.2, 0.1)
RESULTS = Path(__file__).parent / "results"


class UsageRecorder:
    """Wraps a policy; integrates each user's devices between rounds (a round follows every arrival and end)."""

    def __init__(self, inner, bin_s: float = 1800.0) -> None:  # noqa: ANN001 - any Policy
        self.inner, self.name, self.bin_s = inner, inner.name, bin_s
        self.bins: dict[str, list[float]] = {u: [] for u in SHARES}  # user -> device-seconds per bin
        self._last: tuple[float, dict[str, int]] | None = None

    def schedule(self, now: float, jobs: Sequence[JobView], cluster: ClusterView) -> Decision:
        decision = self.inner.schedule(now, jobs, cluster)
        self.close(now)
        users = {j.id: j.user for j in jobs}
        held: dict[str, int] = {}
        for job_id, alloc in decision.allocations.items():
            held[users[job_id]] = held.get(users[job_id], 0) + alloc.num_devices
        self._last = (now, held)
        return decision

    def close(self, now: float) -> None:
        """Charge what the last decision held, up to `now`, into the time bins."""
        if self._last is None:
            return
        t, held = self._last
        while t < now:
            b = int(t // self.bin_s)
            end = min(now, (b + 1) * self.bin_s)
            for user, series in self.bins.items():
                while len(series) <= b:
                    series.append(0.0)
                series[b] += held.get(user, 0) * (end - t)
            t = end
        self._last = (now, held)


def make_trace(cluster: ClusterView, seed: int) -> list[TraceJob]:
    """The day's jobs: per user, enough 1-8 GPU jobs of 0.5-3 h to ask for DEMAND x the cluster-day."""
    rng = np.random.default_rng(seed)
    mean_size = float(np.dot(SIZES, SIZE_P))
    mean_s = 1.75 * 3600.0
    trace = []
    for user, demand in DEMAND.items():
        n = int(round(demand * cluster.total_devices * DAY / (mean_size * mean_s)))
        submit = np.sort(rng.uniform(0, 21 * 3600.0, n))
        gpus = rng.choice(SIZES, n, p=SIZE_P)
        duration = rng.uniform(0.5 * 3600.0, 3 * 3600.0, n)
        priority = rng.choice(3, n, p=[0.8, 0.15, 0.05])
        trace += [
            TraceJob(id=f"{user}-{i:04d}", submit_time=round(float(submit[i]), 1), gpus=int(gpus[i]),
                     duration=round(float(duration[i]), 1), priority=int(priority[i]), user=user)
            for i in range(n)
        ]  # fmt: skip
    return trace


def jain(xs: Sequence[float]) -> float:
    """Jain's fairness index: (sum x)^2 / (n sum x^2); 1 when all equal."""
    return sum(xs) ** 2 / (len(xs) * sum(x * x for x in xs))


def run(name: str, trace: list[TraceJob], cluster: ClusterView, progress: Progress) -> dict:
    """Simulate `trace` under policy `name`; its shares, fairness and JCTs."""
    opts = {"shares": SHARES} if name == "fairshare" else {}
    recorder = UsageRecorder(policies.get(name, **opts))
    task = progress.add_task(name, total=len(trace), policy=name, sim="0 h")

    def on_progress(p) -> None:  # noqa: ANN001 - SimProgress
        progress.update(task, completed=p.finished, sim=f"{p.now / 3600:.1f} h")

    result = simulate(trace, recorder, cluster, SimConfig(), on_progress=on_progress)
    recorder.close(result.end_time)
    progress.update(task, completed=len(trace), sim=f"{result.end_time / 3600:.1f} h")
    day_bins = int(DAY // recorder.bin_s)
    used = {u: sum(s[:day_bins]) for u, s in recorder.bins.items()}
    total = sum(used.values())
    target = {u: s / sum(SHARES.values()) for u, s in SHARES.items()}
    share = {u: used[u] / total for u in SHARES}
    ratio = {u: share[u] / target[u] for u in SHARES}
    jct: dict[str, list[float]] = {u: [] for u in SHARES}
    for j in result.jobs:
        if j.jct is not None:
            jct[j.user].append(j.jct)
    # Cumulative share since t = 0 at the end of each bin of the day (for the plot).
    cum = {u: np.cumsum(recorder.bins[u][:day_bins]) for u in SHARES}
    cum_total = sum(cum.values())
    return {
        "policy": name,
        "share": share,
        "configured": target,
        "max_dev_points": max(abs(share[u] - target[u]) for u in SHARES),
        "max_dev_rel": max(abs(ratio[u] - 1) for u in SHARES),
        "jain": jain(list(ratio.values())),
        "avg_jct_s": {u: float(np.mean(v)) if v else None for u, v in jct.items()},
        "jobs": {u: len(v) for u, v in jct.items()},
        "utilisation_day": total / (cluster.total_devices * DAY),
        "preemptions": sum(j.preemptions for j in result.jobs),
        "end_time_s": result.end_time,
        "wall_s": round(result.wall_s, 2),
        "series": {
            "t_h": [(i + 1) * recorder.bin_s / 3600 for i in range(day_bins)],
            **{u: [float(x) for x in cum[u] / np.maximum(cum_total, 1e-9)] for u in SHARES},
        },
    }


def plot(rows: list[dict], path: Path) -> None:
    """Cumulative device share per user over the day, one panel per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rows), figsize=(5 * len(rows), 3.8), sharey=True)
    colors = dict(zip(SHARES, ("tab:blue", "tab:orange", "tab:green")))
    for ax, r in zip(axes, rows):
        for u in SHARES:
            ax.plot(r["series"]["t_h"], r["series"][u], color=colors[u], label=f"{u} (share {r['configured'][u]:.0%})")
            ax.axhline(r["configured"][u], color=colors[u], linestyle="--", linewidth=0.8)
        ax.set_title(f"{r['policy']}: max dev {r['max_dev_points']:.1%}, Jain {r['jain']:.3f}")
        ax.set_xlabel("hours")
        ax.set_xlim(0, 24)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("device share since t = 0")
    axes[0].legend(loc="upper right", fontsize=8)
    fig.suptitle(f"{CLUSTER} GPUs, demand {DEMAND} x cluster-day; dashed: configured shares", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    """Run the day under each policy, print the table and ratios to priority, write JSON and the plot."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    console = Console()
    nodes, gpus = (int(x) for x in CLUSTER.split("x"))
    cluster = ClusterView.uniform(nodes, gpus)
    trace = make_trace(cluster, args.seed)
    t0 = time.perf_counter()
    columns = (TextColumn("[bold]{task.fields[policy]:<10}"), BarColumn(),
               TextColumn("{task.completed}/{task.total} jobs"), TextColumn("sim {task.fields[sim]}"),
               TimeElapsedColumn())  # fmt: skip
    with Progress(*columns, console=console) as progress:
        rows = [run(name, trace, cluster, progress) for name in POLICIES]
    wall = time.perf_counter() - t0
    users = list(SHARES)
    table = Table(title=f"One day, {len(trace)} jobs on {CLUSTER} GPUs: device share of the day (configured)",
                  title_justify="left")  # fmt: skip
    table.add_column("policy")
    for u in users:
        table.add_column(f"{u} ({rows[0]['configured'][u]:.0%})", justify="right")
    table.add_column("max dev", justify="right")
    table.add_column("Jain", justify="right")
    for u in users:
        table.add_column(f"JCT {u}", justify="right")
    table.add_column("util", justify="right")
    table.add_column("preempt", justify="right")
    for r in rows:
        table.add_row(r["policy"], *(f"{r['share'][u]:.1%}" for u in users), f"{r['max_dev_points']:.1%}",
                      f"{r['jain']:.3f}", *(f"{r['avg_jct_s'][u] / 3600:.1f} h" for u in users),
                      f"{r['utilisation_day']:.0%}", str(r["preemptions"]))  # fmt: skip
    console.print(table)
    base = next(r for r in rows if r["policy"] == BASELINE)
    comparison = {}
    for r in rows:
        if r is base:
            continue
        comparison[r["policy"]] = {
            "max_dev_vs_priority": r["max_dev_points"] / base["max_dev_points"],
            "jain_vs_priority": r["jain"] / base["jain"],
            "avg_jct_vs_priority": {u: r["avg_jct_s"][u] / base["avg_jct_s"][u] for u in users},
        }
        c = comparison[r["policy"]]
        console.print(
            f"{r['policy']} vs {BASELINE}: max deviation x{c['max_dev_vs_priority']:.2f}, "
            f"Jain x{c['jain_vs_priority']:.2f}, avg JCT "
            + ", ".join(f"{u} x{v:.2f}" for u, v in c["avg_jct_vs_priority"].items())
        )
    args.out.mkdir(parents=True, exist_ok=True)
    doc = {"benchmark": "fairshare", "baseline": BASELINE, "cluster": CLUSTER, "seed": args.seed, "jobs": len(trace),
           "shares": SHARES, "demand_x_cluster_day": DEMAND, "wall_s": round(wall, 1), "results": rows,
           "comparison": comparison, "python": platform.python_version()}  # fmt: skip
    (args.out / "fairshare.json").write_text(json.dumps(doc, indent=2) + "\n")
    plot(rows, args.out / "fairshare.png")
    console.print(f"wrote {args.out / 'fairshare.json'} and {args.out / 'fairshare.png'} ({wall:.0f} s)")


if __name__ == "__main__":
    main()
