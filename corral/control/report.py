"""A report of jobs the service ran: per-job summary (JCT, waits, preemptions...), a device Gantt chart and loss curves.

The input is what the service records (jobs as the HTTP API shows them, their
events and metrics), so the same report can be built for any service; `corral
demo` writes one at its end. Allocations come from the events: every
transition into RUNNING carries the run's allocation in its structured data
(`{"allocation": {node: [device ids]}}`), and the next transition out of
RUNNING ends the run.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

from corral.control.states import HOLDING, JobState

LOSS_KEYS = ("loss", "train_loss", "mse")
ACC_KEYS = ("test_acc", "acc", "accuracy", "val_acc")


@dataclass(frozen=True)
class Interval:
    """One run of a job on a set of devices, from its start to the transition that ended it."""

    job_id: int
    name: str
    run: int  # 1-based run number of the job
    start: float  # seconds since the epoch
    end: float
    devices: tuple[str, ...]
    ended_by: str  # the state it moved to ("" while still running); with `cause` says why

    cause: str = ""
    kind: str = ""  # the ending event's data["kind"]: "resize", "preemption", "lost" (structured, not parsed)

    @property
    def outcome(self) -> str:
        """How the run ended, in a word: done, preempted, resized, crashed, cancelled or running."""
        if self.ended_by in (JobState.PREEMPTED.value, JobState.PENDING.value):
            return "resized" if self.kind == "resize" else "preempted"
        return _OUTCOME.get(self.ended_by, "running")


@dataclass
class JobRecord:
    """Everything the report knows about one job: its API view, its events and its metrics."""

    job: dict[str, Any]
    events: list[dict[str, Any]]
    metrics: list[dict[str, Any]]  # [{time, step, values}], oldest first
    metrics_source: str = "api"  # "api" or the file the metrics were read from
    polled_devices: list[tuple[float, tuple[str, ...]]] = field(default_factory=list)


_OUTCOME = {
    JobState.SUCCEEDED.value: "done",
    JobState.RESTARTING.value: "crashed",
    JobState.FAILED.value: "crashed",
    JobState.CANCELLED.value: "cancelled",
}


def allocated_devices(event: Mapping[str, Any]) -> tuple[str, ...] | None:
    """The devices of a start event's allocation (`data["allocation"]`, node -> device ids) as 'node:id', or None."""
    allocation = (event.get("data") or {}).get("allocation")
    if not allocation:
        return None
    return tuple(f"{node}:{d}" for node, devices in sorted(allocation.items()) for d in devices)


def device_sort_key(device: str) -> tuple[str, int]:
    """Order 'node:index' names by node, then numerically by index."""
    node, _, idx = device.rpartition(":")
    return (node, int(idx)) if idx.isdigit() else (device, -1)


def intervals(rec: JobRecord, now: float) -> list[Interval]:
    """The runs of one job with their devices, from its events (polled devices where an event has no allocation)."""
    job, out = rec.job, []
    start: tuple[float, tuple[str, ...]] | None = None
    run = 0
    for ev in rec.events:
        t, dst = float(ev["time"]), ev["dst"]
        if start is not None and dst != JobState.RUNNING.value and ev["src"] in HOLDING:
            out.append(
                Interval(
                    job["id"],
                    job["name"],
                    run,
                    start[0],
                    t,
                    start[1],
                    dst,
                    ev.get("cause", ""),
                    (ev.get("data") or {}).get("kind", ""),
                )
            )
            start = None
        if dst == JobState.RUNNING.value:
            if start is not None:  # RESTARTING -> RUNNING came without a closing event: close it here
                out.append(
                    Interval(job["id"], job["name"], run, start[0], t, start[1], JobState.RESTARTING.value, "restarted")
                )
            run += 1
            devices = allocated_devices(ev) or _polled_at(rec, t) or tuple(job.get("devices") or ())
            start = (t, devices)
    if start is not None:
        out.append(Interval(job["id"], job["name"], run, start[0], now, start[1], ""))
    return out


def _polled_at(rec: JobRecord, t: float) -> tuple[str, ...] | None:
    """Devices first seen polling the job at or after time `t` (the fallback when an event names none)."""
    for when, devices in rec.polled_devices:
        if when >= t and devices:
            return devices
    return None


def waiting_spans(rec: JobRecord, now: float) -> list[tuple[float, float]]:
    """Stretches of time the job spent PENDING (queued or requeued)."""
    spans, since = [], None
    for ev in rec.events:
        t = float(ev["time"])
        if since is not None and ev["dst"] != JobState.PENDING.value:
            spans.append((since, t))
            since = None
        if ev["dst"] == JobState.PENDING.value:
            since = t if since is None else since
    if since is not None:
        spans.append((since, now))
    return spans


# -- metrics ---------------------------------------------------------------------


def read_metrics_file(path: Path) -> list[dict[str, Any]]:
    """Records of a metrics.jsonl the Job API wrote, in the API's shape {time, step, values}."""
    out: list[dict[str, Any]] = []
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line still being written
        if not isinstance(rec, dict):
            continue
        values = {
            k: float(v)
            for k, v in rec.items()
            if k not in ("step", "time") and isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        out.append({"time": float(rec.get("time", 0.0)), "step": int(rec.get("step", 0)), "values": values})
    return out


def _key(records: Sequence[Mapping[str, Any]], preferred: Sequence[str], word: str) -> str | None:
    names: set[str] = set()
    for r in records:
        names.update(r["values"])
    for k in preferred:
        if k in names:
            return k
    return next((k for k in sorted(names) if word in k), None)


def loss_key(records: Sequence[Mapping[str, Any]]) -> str | None:
    """The metric that is the job's loss ('loss', 'mse', any '*loss*'), if it reports one."""
    return _key(records, LOSS_KEYS, "loss")


def accuracy_key(records: Sequence[Mapping[str, Any]]) -> str | None:
    """The metric that is the job's accuracy ('test_acc', 'acc', any '*acc*'), if it reports one."""
    return _key(records, ACC_KEYS, "acc")


def merge_metrics(api: list[dict[str, Any]], file: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """The API's metrics plus the records of the job's metrics.jsonl the API lacks; and where they came from."""
    # job.log writes each record to the file and reports the very same one
    # (same step and time) to the API; the API alone may miss some (a run that
    # crashed before its reporter sent them, a runtime that does not report),
    # the file alone lacks the throughput reports. The union, by (step, time).
    seen = {(int(r["step"]), round(float(r["time"]), 3)) for r in api}
    extra = [r for r in file if (int(r["step"]), round(float(r["time"]), 3)) not in seen]
    if not extra:
        return api, "api"
    if not api:
        return extra, "metrics.jsonl"
    return sorted(api + extra, key=lambda r: float(r["time"])), "api+metrics.jsonl"


def latest(records: Sequence[Mapping[str, Any]], key: str | None) -> float | None:
    """The last reported value of metric `key`."""
    if key is None:
        return None
    for r in reversed(records):
        if key in r["values"]:
            return float(r["values"][key])
    return None


def resume_points(records: Sequence[Mapping[str, Any]], runs: Sequence[Interval]) -> list[dict[str, Any]]:
    """For each run after the first: the last step logged before it and the first logged in it."""
    out = []
    for prev, cur in pairwise(runs):
        before = [int(r["step"]) for r in records if float(r["time"]) <= cur.start]
        after = [int(r["step"]) for r in records if cur.start < float(r["time"]) <= cur.end + 1.0]
        if before and after:
            out.append(
                {
                    "run": cur.run,
                    "after": prev.outcome,
                    "last_step_before": max(before),
                    "first_step_after": after[0],
                    "continued": after[0] > max(before),
                }
            )
    return out


# -- the summary -----------------------------------------------------------------


def job_row(rec: JobRecord, runs: Sequence[Interval], t0: float) -> dict[str, Any]:
    """One job's line of the summary: times in seconds, counts, final state and metrics."""
    job = rec.job
    end = job.get("end_time")
    jct = end - job["submit_time"] if end else None
    lk, ak = loss_key(rec.metrics), accuracy_key(rec.metrics)
    resumes = resume_points([r for r in rec.metrics if lk is None or lk in r["values"]], runs)
    sizes = [len(r.devices) for r in runs]
    lo, hi = job.get("min_gpus", job["gpus"]), job.get("max_gpus", job["gpus"])
    steps = [int(r["step"]) for r in rec.metrics]
    return {
        "id": job["id"],
        "name": job["name"],
        "priority": job["priority"],
        "requested": f"{lo}-{hi}" if lo != hi else str(job["gpus"]),
        "state": job["state"],
        "submit": round(job["submit_time"] - t0, 2),
        "start": round(job["start_time"] - t0, 2) if job.get("start_time") else None,
        "end": round(end - t0, 2) if end else None,
        "jct": _r(jct),
        "queue_time": _r(jct - job["run_time"]) if jct is not None else None,
        "first_wait": _r(job.get("queue_time")),
        "run_time": _r(job["run_time"]),
        "preemptions": job["preemptions"],
        "restarts": job["restarts"],
        "resizes": job.get("resizes", 0),
        "runs": len(runs),
        "sizes": sizes,
        "final_step": max([job.get("step") or 0, *steps]),
        "loss_metric": lk,
        "final_loss": _r(latest(rec.metrics, lk), 4),
        "accuracy_metric": ak,
        "final_accuracy": _r(latest(rec.metrics, ak), 4),
        "resumes": resumes,
        "resumed": all(p["continued"] for p in resumes) if resumes else None,
        "metrics_source": rec.metrics_source,
        "exit_code": job.get("exit_code"),
    }


def _r(x: float | None, digits: int = 2) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), digits)


def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.1f}"
    return str(x)


SUMMARY_COLUMNS: tuple[tuple[str, str], ...] = (  # (key, header)
    ("id", "id"),
    ("name", "job"),
    ("priority", "prio"),
    ("requested", "devices"),
    ("state", "final state"),
    ("jct", "JCT (s)"),
    ("queue_time", "waiting (s)"),
    ("run_time", "running (s)"),
    ("preemptions", "preempt."),
    ("restarts", "restarts"),
    ("resizes", "resizes"),
    ("sizes_text", "sizes"),
    ("result", "final metric"),
)


def row_cells(row: Mapping[str, Any]) -> list[str]:
    """The row's cells in SUMMARY_COLUMNS order, as text."""
    cells = dict(row)
    cells["sizes_text"] = " → ".join(str(s) for s in row["sizes"]) or "-"
    cells["result"] = result_text(row)
    return [_fmt(cells.get(k)) for k, _ in SUMMARY_COLUMNS]


def result_text(row: Mapping[str, Any]) -> str:
    """'test_acc 0.967' when the job reports an accuracy, else its final loss."""
    if row.get("final_accuracy") is not None:
        return f"{row['accuracy_metric']} {row['final_accuracy']:.3f}"
    if row.get("final_loss") is not None:
        return f"{row['loss_metric']} {row['final_loss']:.4g}"
    return "-"


def summary_markdown(rows: Sequence[Mapping[str, Any]], meta: Mapping[str, Any], images: Sequence[str]) -> str:
    """summary.md: what ran, a table of the jobs, the checks, the plots."""
    lines = [f"# {meta.get('title', 'corral report')}", ""]
    for k, v in meta.items():
        if k not in ("title", "notes", "checks"):
            lines.append(f"- **{k}**: {v}")
    lines += ["", "| " + " | ".join(h for _, h in SUMMARY_COLUMNS) + " |", "|" + "---|" * len(SUMMARY_COLUMNS)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row_cells(r)) + " |" for r in rows]
    if meta.get("checks"):
        lines += ["", "## Checks", ""] + [f"- {'PASS' if ok else 'FAIL'}: {text}" for text, ok in meta["checks"]]
    resumed = [r for r in rows if r.get("resumes")]
    if resumed:
        lines += ["", "## Resumes", ""]
        for r in resumed:
            for p in r["resumes"]:
                lines.append(
                    f"- {r['name']} run {p['run']} (after it was {p['after']}): last step logged before "
                    f"{p['last_step_before']}, first after {p['first_step_after']} "
                    f"({'continued from its checkpoint' if p['continued'] else 'started over'})"
                )
    lines += [
        "",
        "## Columns",
        "",
        "- JCT: job completion time, end - submit. waiting: JCT - running (queued, requeued after a "
        "preemption or resize, restarting). running: seconds its processes ran.",
        "- sizes: devices of each run, in order (an elastic job changes size between runs).",
        *[f"- {n}" for n in meta.get("notes", [])],
    ]
    lines += ["", *[f"![{Path(i).stem}]({i})" for i in images], ""]
    return "\n".join(lines)


# -- plots -----------------------------------------------------------------------


def _colours(ids: Sequence[int]) -> dict[int, Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return {jid: cmap(i % 10) for i, jid in enumerate(sorted(ids))}


MARKERS = {"preempted": ("v", "black"), "resized": ("D", "#7b3294"), "crashed": ("X", "#d62728")}


def plot_gantt(
    path: Path,
    records: Sequence[JobRecord],
    runs: Sequence[Interval],
    devices: Sequence[str],
    t0: float,
    now: float,
    title: str,
) -> None:
    """Devices over time, one bar per run coloured by job; below, devices busy and jobs waiting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    names = {r.job["id"]: r.job["name"] for r in records}
    colour = _colours(list(names))
    slots = sorted(set(devices) | {d for iv in runs for d in iv.devices}, key=device_sort_key)
    row = {d: i for i, d in enumerate(slots)}
    span = max(now - t0, 1.0)
    fig, (ax, ax2) = plt.subplots(
        2,
        1,
        figsize=(12, 1.2 + 0.75 * len(slots) + 2.2),
        sharex=True,
        gridspec_kw={"height_ratios": [max(len(slots), 2), 2]},
    )
    seen_outcomes = set()
    for iv in runs:
        x, w = iv.start - t0, max(iv.end - iv.start, span / 500)
        for d in iv.devices:
            y = row[d]
            ax.broken_barh([(x, w)], (y - 0.4, 0.8), facecolors=colour[iv.job_id], edgecolor="white", linewidth=1)
            if w > span / 25:
                label = f"{iv.name}" + (f" (run {iv.run})" if iv.run > 1 and w > span / 10 else "")
                ax.text(
                    x + w / 2,
                    y,
                    label,
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white",
                    fontweight="bold",
                    clip_on=True,
                )
        if iv.outcome in MARKERS:
            marker, c = MARKERS[iv.outcome]
            top = min(row[d] for d in iv.devices) if iv.devices else 0  # the y axis runs downwards
            ax.plot(
                iv.end - t0,
                top - 0.4,
                marker=marker,
                color=c,
                markersize=8,
                markeredgecolor="white",
                clip_on=False,
                zorder=5,
            )
            seen_outcomes.add(iv.outcome)
    for rec in records:  # submissions: dotted lines, named when they come later than the rest
        x = rec.job["submit_time"] - t0
        ax.axvline(x, color=colour[rec.job["id"]], linestyle=":", linewidth=1.2, alpha=0.8)
        if x > span / 50:
            ax.annotate(
                f"#{rec.job['id']} {rec.job['name']} submitted",
                (x, -0.5),
                xytext=(3, 2),
                textcoords="offset points",
                fontsize=8,
                color=colour[rec.job["id"]],
                va="bottom",
                annotation_clip=False,
            )
    ax.set_yticks(range(len(slots)), slots)
    ax.set_ylim(len(slots) - 0.5, -0.5)
    ax.set_ylabel("device slot")
    ax.set_title(title, pad=14)
    ax.grid(axis="x", alpha=0.3)
    handles: list[Any] = [Patch(facecolor=colour[j], label=f"#{j} {n}") for j, n in sorted(names.items())]
    handles += [
        Line2D([], [], marker=MARKERS[o][0], color=MARKERS[o][1], linestyle="", label=o)
        for o in ("preempted", "resized", "crashed")
        if o in seen_outcomes
    ]
    handles.append(Line2D([], [], color="grey", linestyle=":", label="submitted"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)

    # Busy devices and waiting jobs, as step functions of time.
    times = sorted(
        {
            t0,
            now,
            *(iv.start for iv in runs),
            *(iv.end for iv in runs),
            *(t for r in records for s in waiting_spans(r, now) for t in s),
        }
    )
    busy = [sum(len(iv.devices) for iv in runs if iv.start <= t < iv.end) for t in times]
    waiting = [sum(1 for r in records for a, b in waiting_spans(r, now) if a <= t < b) for t in times]
    xs = [t - t0 for t in times]
    ax2.fill_between(xs, busy, step="post", alpha=0.35, color="tab:blue", label="devices busy")
    ax2.step(xs, busy, where="post", color="tab:blue")
    ax2.step(xs, waiting, where="post", color="tab:orange", label="jobs waiting")
    ax2.axhline(len(slots), color="grey", linestyle="--", linewidth=1, label=f"devices ({len(slots)})")
    ax2.set_ylim(0, max(len(slots), max(waiting, default=0)) + 0.5)
    ax2.set_ylabel("count")
    ax2.set_xlabel("seconds since the demo began")
    ax2.set_xlim(0, span * 1.01)
    ax2.grid(alpha=0.3)
    ax2.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_losses(
    path: Path, records: Sequence[JobRecord], runs_by_job: Mapping[int, Sequence[Interval]], title: str
) -> None:
    """One panel per job: loss against optimizer step, coloured by run; accuracy on a second axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in records if loss_key(r.metrics) or accuracy_key(r.metrics)]
    cols = 3 if len(shown) > 4 else 2 if len(shown) > 1 else 1
    rows = max(1, math.ceil(len(shown) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.6 * rows), squeeze=False)
    run_colour = ["tab:blue", "tab:red", "tab:green", "tab:purple", "tab:brown", "tab:olive", "tab:cyan"]
    for ax, rec in zip(axes.flat, shown):
        job, runs = rec.job, list(runs_by_job.get(rec.job["id"], ()))
        lk, ak = loss_key(rec.metrics), accuracy_key(rec.metrics)
        ax2 = ax.twinx() if ak else None
        for i, run in enumerate(runs or [None]):
            recs = [r for r in rec.metrics if run is None or _in_run(r, run, runs)]
            c = run_colour[i % len(run_colour)]
            where = f"run {run.run} on {len(run.devices)} dev" if run is not None else "all"
            if lk:
                pts = [(r["step"], r["values"][lk]) for r in recs if lk in r["values"]]
                if pts:
                    ax.plot(*zip(*pts), marker="o", markersize=3, color=c, label=f"{lk}, {where}")
            if ak and ax2 is not None:
                pts = [(r["step"], r["values"][ak]) for r in recs if ak in r["values"]]
                if pts:
                    ax2.plot(*zip(*pts), linestyle="--", color=c, alpha=0.6, label=f"{ak}, {where}")
        for run in runs[1:]:  # where each later run picked up
            first = next((r["step"] for r in rec.metrics if _in_run(r, run, runs)), None)
            prev = next((p for p in runs if p.run == run.run - 1), None)
            if first is not None and prev is not None:
                ax.axvline(first, color="grey", linestyle=":", linewidth=1)
                ax.annotate(
                    f"run {run.run}\n({prev.outcome})",
                    (first, 1.0),
                    xycoords=("data", "axes fraction"),
                    xytext=(2, -2),
                    textcoords="offset points",
                    fontsize=7,
                    color="dimgrey",
                    va="top",
                )
        if lk:
            vals = [r["values"][lk] for r in rec.metrics if lk in r["values"]]
            if vals and min(vals) > 0 and max(vals) / min(vals) > 20:
                ax.set_yscale("log")
            ax.set_ylabel(lk)
        if ax2 is not None:
            ax2.set_ylabel(f"{ak} (dashed)")
            ax2.set_ylim(0, 1.15)  # headroom for the run labels along the top
        outcomes = ", ".join(f"{o} x{n}" for o, n in _count(p.outcome for p in runs[:-1]).items())
        ax.set_title(
            f"#{job['id']} {job['name']}: {job['state']}" + (f" ({outcomes})" if outcomes else ""), fontsize=10
        )
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="center right", framealpha=0.85)
    for ax in list(axes.flat)[len(shown) :]:
        ax.axis("off")
    if not shown:
        axes.flat[0].text(0.5, 0.5, "no job reported a loss", ha="center", va="center")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _in_run(rec: Mapping[str, Any], run: Interval, runs: Sequence[Interval]) -> bool:
    """The record was logged during `run` (between its start and the next run's start)."""
    later = [r.start for r in runs if r.start > run.start]
    return run.start <= float(rec["time"]) < (min(later) if later else math.inf)


def _count(items: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for i in items:
        out[i] = out.get(i, 0) + 1
    return out


def write_report(
    out: Path,
    records: Sequence[JobRecord],
    rows: Sequence[Mapping[str, Any]],
    devices: Sequence[str],
    t0: float,
    now: float,
    meta: Mapping[str, Any],
) -> list[Path]:
    """Write gantt.png, loss.png, summary.md, summary.json and data.json into `out`; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    runs_by_job = {r.job["id"]: intervals(r, now) for r in records}
    all_runs = [iv for runs in runs_by_job.values() for iv in runs]
    gantt, loss = out / "gantt.png", out / "loss.png"
    # The text first: it is cheap, and what a script reads.
    md = out / "summary.md"
    md.write_text(summary_markdown(rows, meta, [gantt.name, loss.name]))
    js = out / "summary.json"
    doc = {
        **{k: v for k, v in meta.items() if k != "checks"},
        "checks": [{"check": text, "ok": ok} for text, ok in meta.get("checks", [])],
        "jobs": list(rows),
        "runs": [
            {**asdict(iv), "start": round(iv.start - t0, 3), "end": round(iv.end - t0, 3), "outcome": iv.outcome}
            for iv in all_runs
        ],
    }
    js.write_text(json.dumps(doc, indent=2) + "\n")
    data = out / "data.json"  # what the report was built from: jobs, events, metrics
    data.write_text(
        json.dumps({"t0": t0, "now": now, "devices": list(devices), "records": [asdict(r) for r in records]}) + "\n"
    )
    plot_gantt(gantt, records, all_runs, devices, t0, now, f"{meta.get('title', 'corral')}: devices over time")
    plot_losses(loss, records, runs_by_job, f"{meta.get('title', 'corral')}: training curves")
    return [gantt, loss, md, js, data]
