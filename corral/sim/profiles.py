"""Ground truth for Pollux application jobs: step time per placement and batch, efficiency per epoch.

This follows the artifact simulator of the Pollux paper (petuum/adaptdl,
branch osdi21-artifact, `simulator/applications.py`, Apache-2.0), re-derived
without pandas:

- progress is counted in iterations at the application's smallest validated
  batch size (`init_batch_size`); an iteration at batch B is worth
  `gain = (var + sqr) / (var / scale + sqr)` of them, with scale = B / init
  and (sqr, var) the gradient statistics of the current epoch;
- epoch e ends when progress reaches the smallest `progress` value of row e
  over all validation-*.csv files; a job is done after `max_epochs` epochs;
- the step time of a placement comes from placements.csv when it was
  measured (linear in the local batch size), otherwise from a linear
  interpolation over (num_nodes, num_replicas, local_bsz) of the measured
  placements plus scalability.csv.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from corral.errors import UserError
from corral.sim.tracecsv import csv_rows, open_text, parse_float, where

# Per-application settings of the artifact's APPLICATIONS table; every other
# limit comes from the files (max_epochs: fewest validation rows).
_OVERRIDES: dict[str, dict[str, int]] = {"yolov3": {"max_local_bsz": 8}}


@dataclass(frozen=True)
class BatchConfig:
    """How a job runs one step: per-GPU (atomic) batch and gradient-accumulation steps."""

    atomic_bsz: int
    accum_steps: int
    replicas: int

    @property
    def batch_size(self) -> int:
        """Total samples per optimizer step."""
        return self.replicas * self.atomic_bsz * (self.accum_steps + 1)


class ApplicationProfile:
    """One application's measured throughput and statistical efficiency (read-only after load)."""

    def __init__(
        self,
        name: str,
        validation: dict[int, dict[str, np.ndarray]],
        placements: dict[str, np.ndarray],
        scalability: dict[str, np.ndarray],
    ) -> None:
        self.name = name
        self.validation = dict(sorted(validation.items()))
        self._batches = np.array(list(self.validation), dtype=float)
        self._placements = placements
        self._scalability = scalability
        over = _OVERRIDES.get(name, {})
        self.init_batch_size = int(min(self.validation))
        self.max_batch_size = int(max(self.validation))
        self.min_local_bsz = int(over.get("min_local_bsz", placements["local_bsz"].min()))
        self.max_local_bsz = int(over.get("max_local_bsz", placements["local_bsz"].max()))
        self.max_epochs = int(over.get("max_epochs", min(len(v["progress"]) for v in self.validation.values())))
        # boundaries[e] = progress at which epoch e begins (e = 0..max_epochs).
        ends = np.min(np.stack([v["progress"][: self.max_epochs] for v in self.validation.values()]), axis=0)
        self.boundaries = np.concatenate([[0.0], ends])
        self._measured: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for pid in np.unique(placements["placement"]):
            rows = placements["placement"] == pid
            order = np.argsort(placements["local_bsz"][rows])
            self._measured[int(pid)] = (
                placements["local_bsz"][rows][order],
                placements["step_time"][rows][order],
                placements["sync_time"][rows][order],
            )
        self._interp: tuple[Any, Any] | None = None  # built on first use: a Delaunay triangulation is not free

    @property
    def target_progress(self) -> float:
        """Progress at which a job of this application is done."""
        return float(self.boundaries[-1])

    def epoch_of(self, progress: float) -> int:
        """The epoch a job is in at `progress` (0-based, at most max_epochs - 1)."""
        e = int(np.searchsorted(self.boundaries[1:], progress, side="right"))
        return min(e, self.max_epochs - 1)

    def grad_stats(self, batch_size: int, epoch: int) -> tuple[float, float]:
        """(grad_sqr, grad_var) at `batch_size` in `epoch`, interpolated between validated batch sizes."""
        return _grad_stats(self, int(batch_size), int(epoch))

    def step_time(self, placement: tuple[int, ...], local_bsz: float) -> tuple[float, float]:
        """(step_time, sync_time) in seconds per iteration for GPUs per node `placement`."""
        return _step_time(self, tuple(p for p in placement if p), float(local_bsz))

    def batch_config(self, batch_size: int, replicas: int) -> BatchConfig:
        """Atomic batch and accumulation steps for a fixed total batch (the artifact's rule)."""
        local = math.ceil(batch_size / replicas - 1e-8)
        accum = math.ceil(local / self.max_local_bsz - 1e-8) - 1
        if replicas == 1 and batch_size > self.init_batch_size:
            accum = max(1, accum)  # the artifact's quirk: one GPU with a large batch accumulates
        atomic = math.ceil(local / (accum + 1) - 1e-8)
        atomic = max(1, min(atomic, int(self.max_batch_size / (replicas * (accum + 1)))))
        return BatchConfig(atomic, accum, replicas)

    def goodput(self, placement: tuple[int, ...], config: BatchConfig, epoch: int) -> float:
        """Progress per second (init-batch iterations weighted by statistical efficiency)."""
        step, sync = self.step_time(placement, config.atomic_bsz)
        total = step + config.accum_steps * (step - sync)
        sqr, var = self.grad_stats(config.batch_size, epoch)
        scale = config.batch_size / self.init_batch_size
        gain = (var + sqr) / (var / scale + sqr)
        return gain / total

    def best_config(self, placement: tuple[int, ...], epoch: int) -> BatchConfig:
        """The batch configuration with the highest goodput (the batch an adaptive job picks)."""
        return _best_config(self, tuple(p for p in placement if p), int(epoch))

    def _nd_interp(self, x: tuple[float, float, float]) -> tuple[float, float]:
        from scipy.interpolate import LinearNDInterpolator, NearestNDInterpolator

        if self._interp is None:
            p, s = self._placements, self._scalability
            nodes = np.array([len(str(int(v))) for v in p["placement"]], dtype=float)
            reps = np.array([sum(map(int, str(int(v)))) for v in p["placement"]], dtype=float)
            keys: dict[tuple[float, float, float], list[tuple[float, float]]] = {}
            for k, st, sy in zip(
                zip(nodes, reps, p["local_bsz"], strict=True), p["step_time"], p["sync_time"], strict=True
            ):
                keys.setdefault((float(k[0]), float(k[1]), float(k[2])), []).append((st, sy))
            pts = [k for k in keys] + list(zip(s["num_nodes"], s["num_replicas"], s["local_bsz"], strict=True))
            vals = [tuple(np.mean(v, axis=0)) for v in keys.values()] + list(
                zip(s["step_time"], s["sync_time"], strict=True)
            )
            pts_a, vals_a = np.array(pts, dtype=float), np.array(vals, dtype=float)
            self._interp = (LinearNDInterpolator(pts_a, vals_a), NearestNDInterpolator(pts_a, vals_a))
        linear, nearest = self._interp
        out = linear([x])[0]
        if not np.all(np.isfinite(out)):
            # Outside the measured hull (the artifact asserts here): nearest measurement instead.
            out = nearest([x])[0]
        return float(out[0]), float(out[1])


@cache
def _grad_stats(app: ApplicationProfile, batch_size: int, epoch: int) -> tuple[float, float]:
    b = app._batches
    x = float(min(max(batch_size, b[0]), b[-1]))
    hi = int(np.searchsorted(b, x, side="left"))
    lo = hi if b[hi] == x else hi - 1
    vlo, vhi = app.validation[int(b[lo])], app.validation[int(b[hi])]
    if lo == hi:
        return float(vlo["grad_sqr"][epoch]), float(vlo["grad_var"][epoch])
    w = (x - b[lo]) / (b[hi] - b[lo])
    sqr = (1 - w) * vlo["grad_sqr"][epoch] + w * vhi["grad_sqr"][epoch]
    var = (1 - w) * vlo["grad_var"][epoch] + w * vhi["grad_var"][epoch]
    return float(sqr), float(var)


@cache
def _step_time(app: ApplicationProfile, placement: tuple[int, ...], local_bsz: float) -> tuple[float, float]:
    # Normalise to the lexicographically smallest rotation, as the artifact does.
    norm = min(placement[i:] + placement[:i] for i in range(len(placement)))
    if all(p < 10 for p in norm):
        measured = app._measured.get(int("".join(map(str, norm))))
        if measured is not None:
            bsz, step, sync = measured
            return float(np.interp(local_bsz, bsz, step)), float(np.interp(local_bsz, bsz, sync))
    return app._nd_interp((float(min(len(norm), 16)), float(sum(norm)), local_bsz))


@cache
def _best_config(app: ApplicationProfile, placement: tuple[int, ...], epoch: int) -> BatchConfig:
    # As adaptdl's GoodputFunction.optimize: 50 total batch sizes in geometric
    # space from max(init, replicas * min local batch) to the largest batch.
    replicas = sum(placement)
    low = max(app.init_batch_size, app.min_local_bsz * replicas)
    if low >= app.max_batch_size:
        return app.batch_config(app.max_batch_size, replicas)
    best, best_goodput = None, -1.0
    for target in np.unique(np.geomspace(low, app.max_batch_size, 50).astype(int)):
        cfg = app.batch_config(int(target), replicas)
        if not app.min_local_bsz <= cfg.atomic_bsz <= app.max_local_bsz:
            continue
        g = app.goodput(placement, cfg, epoch)
        if g > best_goodput:
            best, best_goodput = cfg, g
    return best if best is not None else app.batch_config(low, replicas)


def _columns(path: Path, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    header, rows = csv_rows(path, open_text(path))
    for n in names:
        if n not in header:
            raise UserError(f"{path} line 1: missing column '{n}'")
    cols: dict[str, list[float]] = {n: [] for n in names}
    for line, row in rows:
        for n in names:
            cols[n].append(parse_float(row[n], where(path, line, n)))
    if not cols[names[0]]:
        raise UserError(f"{path}: no rows")
    return {n: np.array(v, dtype=float) for n, v in cols.items()}


@lru_cache(maxsize=32)
def load_profile(app_dir: Path) -> ApplicationProfile:
    """Read apps/<name>/ (placements.csv, scalability.csv, validation-<BSZ>.csv); cached per directory."""
    if not app_dir.is_dir():
        raise UserError(f"application profile not found: {app_dir}")
    validation = {}
    for path in sorted(app_dir.glob("validation-*.csv")):
        try:
            bsz = int(path.stem.split("-")[-1])
        except ValueError:
            raise UserError(f"{path}: expected a name like validation-<batch size>.csv") from None
        validation[bsz] = _columns(path, ("progress", "iteration", "grad_sqr", "grad_var"))
    if not validation:
        raise UserError(f"{app_dir}: no validation-<batch size>.csv files")
    placements = _columns(app_dir / "placements.csv", ("placement", "local_bsz", "step_time", "sync_time"))
    scalability = _columns(
        app_dir / "scalability.csv", ("num_nodes", "num_replicas", "local_bsz", "step_time", "sync_time")
    )
    return ApplicationProfile(app_dir.name, validation, placements, scalability)
