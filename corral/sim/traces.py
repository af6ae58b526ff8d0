"""Traces: the jobs a simulation replays, loaded from files or generated.

`load_trace(spec)` accepts

- a file path: a generic CSV (format below), a Pollux workload CSV
  (`name,time,application,num_replicas,batch_size`), a Philly CSV
  (`timestamp,duration,num_gpus,gpu_time,cluster`: every row, arrivals relative
  to the first) or a Gavel `.trace` (TSV, 10 or 7 fields);
- `pollux:workload-N` (also `pollux:workloads-realistic/workload-6`): a Pollux
  workload from the shared traces directory;
- `philly:N[:seed]`: N jobs sampled from the Philly trace;
- `gavel:NAME`: `gavel/NAME.trace` from the shared traces directory;
- `synthetic:N[:seed]`: N generated jobs (see corral.sim.synthetic).

Generic CSV (header required, columns in any order, the last four optional)::

    id,submit_time,duration,gpus,min_gpus,max_gpus,priority,user
    train-a,0,3600,4,,,0,alice

`submit_time` and `duration` are seconds; `duration` is the run time alone on
`gpus` devices packed on as few nodes as possible. `min_gpus`/`max_gpus`
(default `gpus`) make a job elastic.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any

from corral.errors import UserError
from corral.sim.profiles import load_profile
from corral.sim.tracecsv import csv_rows, open_text, parse_float, parse_int, parse_timestamp, where
from corral.sim.tracejob import TraceJob

__all__ = [
    "SPEC_HELP",
    "TraceJob",
    "default_traces_dir",
    "load_file",
    "load_gavel",
    "load_generic_csv",
    "load_pollux_workload",
    "load_trace",
    "parse_timestamp",
]

GENERIC_COLUMNS = ("id", "submit_time", "duration", "gpus", "min_gpus", "max_gpus", "priority", "user")
GENERIC_REQUIRED = GENERIC_COLUMNS[:4]
POLLUX_COLUMNS = ("name", "time", "application", "num_replicas", "batch_size")
PHILLY_COLUMNS = ("timestamp", "duration", "num_gpus")
SPEC_HELP = "a file path, synthetic:N[:seed], philly:N[:seed], pollux:workload-N or gavel:NAME"


def default_traces_dir() -> Path:
    """The shared traces directory: ../shared/traces beside the repository (or the working directory)."""
    here = Path(__file__).resolve().parents[2]
    for base in (here.parent, Path.cwd().parent, Path.cwd()):
        cand = base / "shared" / "traces"
        if cand.is_dir():
            return cand
    return here.parent / "shared" / "traces"


def load_trace(spec: str, *, devices: int = 64, traces_dir: Path | None = None) -> list[TraceJob]:
    """Load the jobs named by `spec`, sorted by submit time. `devices` sizes synthetic load."""
    spec = spec.strip()
    if not spec:
        raise UserError(f"no trace given: expected {SPEC_HELP}")
    base = traces_dir or default_traces_dir()
    kind, sep, rest = spec.partition(":")
    if sep and not Path(spec).exists():
        if kind == "synthetic":
            from corral.sim.synthetic import synthetic_trace

            n, seed = _count_seed(spec, rest)
            return synthetic_trace(n, seed=seed, devices=devices)
        if kind == "philly":
            from corral.sim.philly import sample_philly

            n, seed = _count_seed(spec, rest)
            return sample_philly(_shared(base / "pollux" / "philly.csv", spec), n, seed=seed)
        if kind == "pollux":
            name = rest.removesuffix(".csv")
            path = base / "pollux" / (name if "/" in name else f"workloads/{name}")
            return load_pollux_workload(_shared(path.with_suffix(".csv"), spec))
        if kind == "gavel":
            return load_gavel(_shared(base / "gavel" / f"{rest.removesuffix('.trace')}.trace", spec))
        raise UserError(f"unknown trace {spec!r}: expected {SPEC_HELP}")
    path = Path(spec)
    if not path.exists():
        raise UserError(f"trace file not found: {spec} (expected {SPEC_HELP})")
    return load_file(path)


def load_file(path: Path) -> list[TraceJob]:
    """Load a trace file, recognising its format by suffix (.trace) or by its CSV header."""
    if path.suffix == ".trace":
        return load_gavel(path)
    lines = open_text(path)
    header = [h.strip() for h in (lines[0].split(",") if lines else [])]
    if tuple(header) == POLLUX_COLUMNS:
        return load_pollux_workload(path, lines)
    if tuple(header[:3]) == PHILLY_COLUMNS:
        from corral.sim.philly import load_philly

        return load_philly(path, lines)
    return load_generic_csv(path, lines)


def load_generic_csv(path: Path, lines: list[str] | None = None) -> list[TraceJob]:
    """Read the documented generic CSV (id,submit_time,duration,gpus[,min_gpus,max_gpus,priority,user])."""
    header, rows = csv_rows(path, open_text(path) if lines is None else lines)
    for col in header:
        if col not in GENERIC_COLUMNS:
            raise UserError(f"{path} line 1: unknown column '{col}' (expected {','.join(GENERIC_COLUMNS)})")
    for col in GENERIC_REQUIRED:
        if col not in header:
            raise UserError(f"{path} line 1: missing column '{col}' (expected {','.join(GENERIC_COLUMNS)})")
    jobs: list[TraceJob] = []
    seen: dict[str, int] = {}
    for line, row in rows:
        at = functools.partial(where, path, line)
        job_id = row["id"]
        if not job_id:
            raise UserError(f"{at('id')}: expected a job id, got an empty field")
        if job_id in seen:
            raise UserError(f"{at('id')}: duplicate job id {job_id!r} (first on line {seen[job_id]})")
        seen[job_id] = line
        gpus = parse_int(row["gpus"], at("gpus"), minimum=1)
        min_gpus = parse_int(row["min_gpus"], at("min_gpus"), minimum=1) if row.get("min_gpus") else gpus
        max_gpus = parse_int(row["max_gpus"], at("max_gpus"), minimum=1) if row.get("max_gpus") else gpus
        if min_gpus > gpus:
            raise UserError(f"{at('min_gpus')}: must be at most gpus ({gpus}), got {min_gpus}")
        if max_gpus < gpus:
            raise UserError(f"{at('max_gpus')}: must be at least gpus ({gpus}), got {max_gpus}")
        jobs.append(
            TraceJob(
                id=job_id,
                submit_time=parse_float(row["submit_time"], at("submit_time")),
                duration=parse_float(row["duration"], at("duration"), positive=True),
                gpus=gpus,
                min_gpus=min_gpus,
                max_gpus=max_gpus,
                priority=parse_int(row["priority"], at("priority")) if row.get("priority") else 0,
                user=row.get("user") or "default",
            )
        )
    return _finish(path, jobs)


def load_pollux_workload(path: Path, lines: list[str] | None = None) -> list[TraceJob]:
    """Read a Pollux workload CSV; each application's profile comes from ../apps/<application>/."""
    header, rows = csv_rows(path, open_text(path) if lines is None else lines)
    if tuple(header) != POLLUX_COLUMNS:
        raise UserError(f"{path} line 1: expected the header {','.join(POLLUX_COLUMNS)}")
    apps_dir = path.resolve().parent.parent / "apps"
    jobs: list[TraceJob] = []
    seen: dict[str, int] = {}
    for line, row in rows:
        name = row["name"]
        if not name:
            raise UserError(f"{where(path, line, 'name')}: expected a job name, got an empty field")
        if name in seen:
            raise UserError(f"{where(path, line, 'name')}: duplicate job name {name!r} (first on line {seen[name]})")
        seen[name] = line
        app_name = row["application"]
        if not app_name or not (apps_dir / app_name).is_dir():
            known = sorted(p.name for p in apps_dir.iterdir()) if apps_dir.is_dir() else []
            raise UserError(
                f"{where(path, line, 'application')}: no profile for {app_name!r} in {apps_dir}"
                + (f" (known: {', '.join(known)})" if known else "")
            )
        profile = load_profile(apps_dir / app_name)
        gpus = parse_int(row["num_replicas"], where(path, line, "num_replicas"), minimum=1)
        # An adaptive (Pollux) job may run on 1 .. as many GPUs as its largest batch
        # fills at the smallest local batch (at most 64), as in the artifact simulator;
        # ncf is kept at its requested count there too.
        limit = min(64, profile.max_batch_size // profile.min_local_bsz)
        max_gpus = gpus if app_name == "ncf" else max(gpus, limit)
        jobs.append(
            TraceJob(
                id=name,
                submit_time=parse_float(row["time"], where(path, line, "time")),
                gpus=gpus,
                min_gpus=1,
                max_gpus=max_gpus,
                application=app_name,
                batch_size=parse_int(row["batch_size"], where(path, line, "batch_size"), minimum=1),
                profile=profile,
            )
        )
    return _finish(path, jobs)


def load_gavel(path: Path) -> list[TraceJob]:
    """Read a Gavel trace (TSV); duration = total_steps / isolated steps/s on a V100 at its scale factor."""
    lines = open_text(path)
    tput_path = path.parent / "simulation_throughputs.json"
    if not tput_path.exists():
        raise UserError(f"{path}: needs simulation_throughputs.json beside it ({tput_path} not found)")
    throughputs = _v100_throughputs(tput_path)
    jobs: list[TraceJob] = []
    for line, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        f = text.split("\t")
        if len(f) == 10:  # physical_cluster format
            job_type, steps_s, scale_s, prio_s, arrival_s = f[0], f[5], f[6], f[7], f[9]
            cols = ("total_steps", "scale_factor", "priority_weight", "arrival_time")
        elif len(f) == 7:  # older msr format
            job_type, steps_s, arrival_s, scale_s, prio_s = f[0], f[4], f[5], f[6], "1"
            cols = ("total_steps", "scale_factor", "priority_weight", "arrival_time")
        else:
            raise UserError(f"{path} line {line}: expected 10 (or 7) tab-separated fields, got {len(f)}")
        steps = parse_float(steps_s, where(path, line, cols[0]), positive=True)
        scale = parse_int(scale_s, where(path, line, cols[1]), minimum=1)
        weight = parse_float(prio_s, where(path, line, cols[2]))
        tput = _isolated(throughputs, tput_path, job_type, scale)
        if not tput and scale > 1:
            # Gavel measured some types (CycleGAN, A3C) on one GPU only, yet the
            # msr traces ask for more: assume linear scaling from one GPU.
            single = _isolated(throughputs, tput_path, job_type, 1)
            tput = single * scale if single else None
        if not tput:
            raise UserError(
                f"{where(path, line, 'job_type')}: no V100 throughput for {job_type!r} at scale factor {scale}"
            )
        jobs.append(
            TraceJob(
                id=f"{path.stem}-{len(jobs)}",
                submit_time=parse_float(arrival_s, where(path, line, cols[3])),
                duration=steps / tput,
                gpus=scale,
                priority=int(round(weight)),
            )
        )
    return _finish(path, jobs)


def _v100_throughputs(tput_path: Path) -> dict[str, Any]:
    """The 'v100' mapping of Gavel's simulation_throughputs.json; UserError naming the file when it is not that."""
    expected = "expected Gavel's throughputs JSON: an object with a 'v100' object of \"('JOB TYPE', SCALE)\" entries"
    try:
        doc = json.loads("\n".join(open_text(tput_path)))
    except (json.JSONDecodeError, RecursionError):
        raise UserError(f"{tput_path}: not valid JSON; {expected}") from None
    v100 = doc.get("v100") if isinstance(doc, dict) else None
    if not isinstance(v100, dict):
        raise UserError(f"{tput_path}: no 'v100' object; {expected}")
    return v100


def _isolated(throughputs: dict[str, Any], tput_path: Path, job_type: str, scale: int) -> float | None:
    """Steps/s of `job_type` alone at `scale` GPUs (Gavel's "null" colocation), None when not measured."""
    key = f"({job_type!r}, {scale})"
    entry = throughputs.get(key)
    if entry is None:
        return None
    value = entry.get("null") if isinstance(entry, dict) else math.nan
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise UserError(
            f'{tput_path}: v100 entry "{key}": expected an object whose "null" is a steps/s number >= 0, '
            f"got {json.dumps(entry)[:80]}"
        )
    return float(value)


def _finish(path: Path, jobs: list[TraceJob]) -> list[TraceJob]:
    if not jobs:
        raise UserError(f"{path}: the trace has no jobs")
    return sorted(jobs, key=lambda j: j.submit_time)  # stable: ties keep file order


def _shared(path: Path, spec: str) -> Path:
    if not path.is_file():
        raise UserError(f"trace {spec!r} not found: {path} does not exist")
    return path


def _count_seed(spec: str, rest: str) -> tuple[int, int]:
    parts = rest.split(":")
    if not 1 <= len(parts) <= 2 or not all(p.strip().isdigit() for p in parts) or int(parts[0]) < 1:
        raise UserError(f"trace {spec!r}: expected {spec.split(':')[0]}:N[:seed] with N >= 1 and seed >= 0")
    return int(parts[0]), int(parts[1]) if len(parts) == 2 else 0
