"""`corral simulate`: replay a trace against one or more policies and compare them.

Registered on the main app by corral.cli. Importing this module stays cheap:
numpy, matplotlib and the engine are imported inside the command.
"""

from __future__ import annotations

import math
from pathlib import Path

import typer

from corral.errors import UserError

TRACE_HELP = (
    "A trace file (generic CSV id,submit_time,duration,gpus[,min_gpus,max_gpus,priority,user], "
    "Pollux workload CSV, Philly CSV, Gavel .trace) or synthetic:N[:seed], philly:N[:seed], "
    "pollux:workload-N, gavel:NAME."
)


def _number(text: str, option: str, *, positive: bool) -> float:
    """An option value as a finite number (> 0 when `positive`, else >= 0); UserError otherwise."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        need = "a number > 0" if positive else "a number >= 0"
        raise UserError(f"{option} must be {need} (seconds), got {text!r}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except (TypeError, ValueError):
        value = -1
    if value < 0:
        raise UserError(f"--seed must be an integer >= 0, got {text!r}")
    return value


def simulate_command(
    trace: str = typer.Option(..., "--trace", help=TRACE_HELP, metavar="PATH|SPEC"),
    policy: str = typer.Option("fifo", "--policy", help="Comma-separated policies to compare, e.g. fifo,tiresias."),
    cluster: str = typer.Option("16x4", "--cluster", help="Cluster as NODESxGPUS.", metavar="NODESxGPUS"),
    placement: str = typer.Option("pack", "--placement", help="Placer: pack, spread or random."),
    round_s: str = typer.Option("60", "--round", help="Seconds between scheduling rounds.", metavar="SECONDS"),
    restart_overhead: str = typer.Option(
        "30",
        "--restart-overhead",
        help="Seconds a restarted, resized or migrated job makes no progress.",
        metavar="SECONDS",
    ),
    event_rounds: bool = typer.Option(
        True, "--event-rounds/--no-event-rounds", help="Also run a round right after each arrival or completion."
    ),
    seed: str = typer.Option("0", "--seed", help="Seed for sampled traces and random placement.", metavar="INT"),
    out: Path | None = typer.Option(None, "--out", help="Write report.md, metrics.json and PNG plots here."),
    json_out: bool = typer.Option(False, "--json", help="Print machine-readable metrics only."),
) -> None:
    """Simulate a trace under one or more scheduling policies and compare JCT, makespan, utilisation and fairness."""
    import json
    import sys

    from rich.console import Console

    from corral.sim.engine import SimConfig
    from corral.sim.report import metrics_document, write_report
    from corral.sim.run import make_policy, parse_cluster, policy_names, run_policies
    from corral.sim.traces import load_trace

    # Parse and check everything before the (possibly long) runs start.
    view = parse_cluster(cluster)
    names = policy_names(policy)
    config = SimConfig(
        round_s=_number(round_s, "--round", positive=True),
        restart_overhead_s=_number(restart_overhead, "--restart-overhead", positive=False),
        event_rounds=event_rounds,
    )
    seed_i = _seed(seed)
    if out is not None and out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")
    for name in names:
        make_policy(name, placement=placement, seed=seed_i)
    jobs = load_trace(_with_seed(trace, seed_i), devices=view.total_devices)

    meta = {
        "trace": trace,
        "cluster": cluster,
        "jobs": len(jobs),
        "placement": placement,
        "round_s": config.round_s,
        "restart_overhead_s": config.restart_overhead_s,
        "event_rounds": config.event_rounds,
        "seed": seed_i,
    }
    if json_out:
        results = run_policies(jobs, names, view, config, placement=placement, seed=seed_i)
    else:
        results = _run_with_progress(jobs, names, view, config, placement, seed_i)
    if out is not None:
        write_report(out, results, meta)
    if json_out:
        sys.stdout.write(json.dumps(metrics_document(results, meta), indent=2) + "\n")
        return
    console = Console()
    console.print(_table(results, meta))
    if out is not None:
        console.print(f"wrote {out / 'report.md'}, {out / 'metrics.json'} and plots to {out}/")


def _with_seed(trace: str, seed: int) -> str:
    """Apply --seed to synthetic:N / philly:N specs that do not carry their own seed."""
    kind, _, rest = trace.partition(":")
    if kind in ("synthetic", "philly") and rest and ":" not in rest:
        return f"{trace}:{seed}"
    return trace


def _run_with_progress(jobs, names, view, config, placement, seed):  # noqa: ANN001, ANN202 - internal
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from corral.sim.run import run_policies

    columns = (
        TextColumn("[bold]{task.fields[policy]:<12}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("jobs done, t = {task.fields[sim]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=False) as progress:
        tasks = {n: progress.add_task(n, total=len(jobs), policy=n, sim="0 s", start=False) for n in names}

        def on_start(name: str) -> None:
            progress.start_task(tasks[name])

        def on_progress(name: str, p) -> None:  # noqa: ANN001 - SimProgress
            progress.update(tasks[name], completed=p.finished, sim=_duration(p.now))

        results = run_policies(
            jobs, names, view, config, placement=placement, seed=seed, on_start=on_start, on_progress=on_progress
        )
    return results


def _duration(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds:,.0f} s"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:,.1f} h"
    return f"{seconds / 86400:,.1f} d"


def _table(results, meta):  # noqa: ANN001, ANN202 - SimResults to a rich Table
    """Metrics as rows and policies as columns: fits a terminal for a handful of policies."""
    from rich.table import Table

    from corral.sim.metrics import compute_metrics
    from corral.sim.report import COLUMNS, fmt

    table = Table(
        title=f"{meta['trace']} on {meta['cluster']}: {meta['jobs']} jobs, {meta['round_s']:g} s rounds",
        title_justify="left",
    )
    table.add_column("metric")
    for r in results:
        table.add_column(r.policy, justify="right", style="bold" if r is results[0] else None)
    metrics = [compute_metrics(r) for r in results]
    for field, header, kind in COLUMNS:
        table.add_row(header, *(fmt(getattr(m, field), kind) for m in metrics))
    return table


def register(app: typer.Typer) -> None:
    """Add the simulator's commands to `app`."""
    app.command("simulate")(simulate_command)
