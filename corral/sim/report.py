"""Reports of simulation runs: a markdown table, metrics.json and PNG plots (matplotlib, Agg)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from corral.sim.engine import SimResult
from corral.sim.metrics import Metrics, compute_metrics, jcts, queue_series, utilisation_series

# (field, column header, format) of the comparison table, in order.
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("finished", "finished", "int"),
    ("avg_jct", "avg JCT (s)", "s"),
    ("median_jct", "median JCT (s)", "s"),
    ("p99_jct", "p99 JCT (s)", "s"),
    ("makespan", "makespan (s)", "s"),
    ("avg_queueing_delay", "avg queueing (s)", "s"),
    ("utilisation", "utilisation", "pct"),
    ("ftf_max", "max FTF rho", "ratio"),
    ("ftf_unfair_share", "FTF rho>1", "pct"),
    ("preemptions", "preemptions", "int"),
    ("restarts", "restarts", "int"),
    ("unfinished", "unfinished", "int"),
    ("unschedulable", "unschedulable", "int"),
)


# Policies often coincide for long stretches: vary the line style so each stays visible.
_STYLES = ("-", "--", "-.", ":")


def _width(i: int, n: int) -> float:
    """Earlier series drawn wider, so a later one on top of it leaves it visible."""
    return 1.0 + 0.6 * (n - 1 - i)


def fmt(value: object, kind: str) -> str:
    """One table cell: seconds with thousands separators, percentages, ratios; '-' when undefined."""
    if value is None:
        return "-"
    if kind == "int":
        return f"{int(value):,}"  # type: ignore[call-overload]
    if kind == "pct":
        return f"{100 * float(value):.1f}%"  # type: ignore[arg-type]
    if kind == "ratio":
        return f"{float(value):.2f}"  # type: ignore[arg-type]
    v = float(value)  # type: ignore[arg-type]
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.1f}"


def markdown_table(metrics: Sequence[Metrics]) -> str:
    """A markdown table with one row per policy."""
    head = "| policy | " + " | ".join(h for _, h, _ in COLUMNS) + " |"
    rule = "|---|" + "---:|" * len(COLUMNS)
    rows = [f"| {m.policy} | " + " | ".join(fmt(getattr(m, f), k) for f, _, k in COLUMNS) + " |" for m in metrics]
    return "\n".join([head, rule, *rows])


def metrics_document(results: Sequence[SimResult], meta: Mapping[str, object]) -> dict[str, object]:
    """The metrics.json content: run parameters and each policy's metrics and run statistics."""
    return {
        **meta,
        "policies": {
            r.policy: {
                **compute_metrics(r).as_dict(),
                "rounds": r.rounds,
                "events": r.events,
                "wall_s": round(r.wall_s, 3),
                "stopped": r.stopped,
            }
            for r in results
        },
    }


def write_report(out: Path, results: Sequence[SimResult], meta: Mapping[str, object]) -> list[Path]:
    """Write report.md, metrics.json and the three PNG plots into `out`; return the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    metrics = [compute_metrics(r) for r in results]
    title = f"Simulation: {meta.get('trace', 'trace')} on {meta.get('cluster', '?')}"
    params = ", ".join(f"{k} = {v}" for k, v in meta.items() if k not in ("trace", "cluster"))
    md = [
        f"# {title}",
        "",
        params,
        "",
        markdown_table(metrics),
        "",
        "JCT: submit to finish. FTF rho: JCT over the run time on a fair 1/N share of the cluster",
        "(Themis); rho > 1 means the job did worse than its fair share.",
        "",
        "![JCT CDF](jct_cdf.png)",
        "![Utilisation](utilisation.png)",
        "![Queue length](queue.png)",
        "",
    ]
    paths = [out / "report.md", out / "metrics.json"]
    paths[0].write_text("\n".join(md))
    paths[1].write_text(json.dumps(metrics_document(results, meta), indent=2) + "\n")
    paths += plot_all(out, results, title)
    return paths


def plot_all(out: Path, results: Sequence[SimResult], title: str) -> list[Path]:
    """JCT CDF per policy (log x), utilisation over time and queue length over time, as PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, r in enumerate(results):
        v = np.sort(jcts(r))
        if len(v):
            ax.step(
                np.maximum(v, 1e-3),
                np.arange(1, len(v) + 1) / len(v),
                where="post",
                label=r.policy,
                linestyle=_STYLES[i % len(_STYLES)],
                linewidth=_width(i, len(results)),
            )
    ax.set_xscale("log")
    ax.set_xlabel("job completion time (s, log scale)")
    ax.set_ylabel("fraction of finished jobs")
    ax.set_ylim(0, 1.01)
    ax.set_title(f"JCT CDF - {title}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(title="policy")
    paths.append(_save(fig, out / "jct_cdf.png"))

    for name, series, ylabel, fname in (
        ("Utilisation", utilisation_series, "devices allocated (%)", "utilisation.png"),
        ("Queue length", queue_series, "jobs waiting (mean over each time bin)", "queue.png"),
    ):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        # One time origin and unit for every policy: the first arrival of the trace.
        starts = [r.times[0] for r in results if len(r.times)]
        t0 = min(starts, default=0.0)
        hours = max((r.end_time for r in results), default=0.0) - t0 > 3 * 3600
        for i, r in enumerate(results):
            t, y = series(r)
            if not len(t):
                continue
            x = (t - t0) / (3600 if hours else 60)
            ax.plot(
                x,
                100 * y if fname == "utilisation.png" else y,
                label=r.policy,
                linewidth=_width(i, len(results)),
                linestyle=_STYLES[i % len(_STYLES)],
            )
        ax.set_xlabel(f"simulated time since first arrival ({'hours' if hours else 'minutes'})")
        ax.set_ylabel(ylabel)
        if fname == "utilisation.png":
            ax.set_ylim(0, 105)
        else:
            ax.set_ylim(bottom=0)
        ax.set_title(f"{name} - {title}", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(title="policy")
        paths.append(_save(fig, out / fname))
    return paths


def _save(fig, path: Path) -> Path:  # noqa: ANN001 - a matplotlib Figure
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
