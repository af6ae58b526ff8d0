"""The Philly trace (one row per job): load it whole, or sample N jobs as the Pollux artifact does."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from corral.errors import UserError
from corral.sim.tracecsv import csv_rows, open_text, parse_float, parse_int, parse_timestamp, where
from corral.sim.tracejob import TraceJob

DAY_S = 86400.0


def _rows(path: Path, lines: list[str] | None) -> list[tuple[float, float, int, float, str]]:
    header, rows = csv_rows(path, open_text(path) if lines is None else lines)
    for col in ("timestamp", "duration", "num_gpus"):
        if col not in header:
            raise UserError(f"{path} line 1: missing column '{col}'")
    out = []
    for line, row in rows:
        ts = parse_timestamp(row["timestamp"], where(path, line, "timestamp"))
        duration = parse_float(row["duration"], where(path, line, "duration"), positive=True)
        gpus = parse_int(row["num_gpus"], where(path, line, "num_gpus"), minimum=1)
        gpu_time = (
            parse_float(row["gpu_time"], where(path, line, "gpu_time")) if row.get("gpu_time") else duration * gpus
        )
        out.append((ts, duration, gpus, gpu_time, row.get("cluster") or "default"))
    if not out:
        raise UserError(f"{path}: the trace has no jobs")
    return out


def load_philly(path: Path, lines: list[str] | None = None) -> list[TraceJob]:
    """Every row of a Philly CSV; submit times relative to the earliest timestamp."""
    rows = sorted(_rows(path, lines), key=lambda r: r[0])
    t0 = rows[0][0]
    return [
        TraceJob(id=f"philly-{i}", submit_time=ts - t0, duration=dur, gpus=g, user=vc)
        for i, (ts, dur, g, _, vc) in enumerate(rows)
    ]


def sample_philly(path: Path, n: int, *, seed: int = 0) -> list[TraceJob]:
    """N jobs drawn at random (seeded) from a Philly CSV, arriving at their time of day.

    As the Pollux workload generator (simulator/workload.py): rows shorter than
    60 s or above 1000 GPU-hours are dropped, and a job's submit time is the
    time of day of its timestamp, so the N jobs arrive over 24 hours.
    """
    rows = [r for r in _rows(path, None) if r[1] >= 60 and r[3] < 1000 * 3600]
    if n > len(rows):
        raise UserError(f"philly:{n}: the trace has only {len(rows)} eligible jobs")
    pick = np.sort(np.random.default_rng(seed).choice(len(rows), size=n, replace=False))
    chosen = sorted(((rows[i][0] % DAY_S, rows[i]) for i in pick), key=lambda x: x[0])
    return [
        TraceJob(id=f"philly-{i}", submit_time=t, duration=r[1], gpus=r[2], user=r[4])
        for i, (t, r) in enumerate(chosen)
    ]
