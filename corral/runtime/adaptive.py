"""Adaptive batch size: the Job chooses its global batch by goodput, as AdaptDL does, and scales the LR.

    job = corral.init(strategy="ddp", batch_size="adaptive", initial_batch=32, max_batch=512)
    model, optimizer, loader = job.prepare(model, optimizer, dataset)   # no batch_size: the job picks it

At start, at every resize (a restart at another world size) and at every epoch
boundary the job picks the global batch M = local batch x replicas x
accumulation steps that maximises goodput = throughput(M) x efficiency(M)
(corral.goodput, Pollux's model) within [initial_batch, max_batch]; throughput
is fitted from the job's own step times per (nodes, replicas, local batch) and
efficiency(M) = (phi + M0) / (phi + M) from its measured gradient noise scale
phi (corral.runtime.gns). Until the job has both it stays at M0 =
initial_batch. Accumulation is used only when the chosen local batch would
exceed `max_local_batch` (memory).

The learning rate is multiplied, for each optimizer step, by AdaScale's gain
s x efficiency(M) (`adascale`, s = M / M0), by s (`linear`) or by sqrt(s)
(`sqrt`). Progress is counted in samples at M0: a step of M samples counts M x
efficiency(M) of them, so `job.epochs(n)` trains until n epochs' worth of
progress at M0 is made (a larger batch takes more passes over the data), and
the progress the scheduler sees means the same at any batch.

Every rank must decide the same: decisions are made from state every rank
holds alike (rank 0's measurements, from the checkpoint at start and
broadcast at epoch boundaries), and phi is fixed between two decisions.
Pure arithmetic over corral.goodput; the Job does the collectives.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from corral.errors import UserError
from corral.goodput import GoodputModel, fit_throughput

LR_SCALINGS = ("adascale", "linear", "sqrt")
KEPT = 64  # step times kept per configuration: the median of the latest is the observation
DECISIONS_KEPT = 64  # besides the first decision at each world size


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{name} must be an integer >= 1, got {value!r}")
    return value


@dataclass(frozen=True)
class Choice:
    """A batch configuration: `local_batch` samples per replica per micro-step, `accum` micro-steps per step."""

    replicas: int
    local_batch: int
    accum: int

    @property
    def global_batch(self) -> int:
        """Samples per optimizer step, over all replicas."""
        return self.replicas * self.local_batch * self.accum


class AdaptiveBatch:
    """The adaptive-batch state of one job: its measurements, its current choice and its progress."""

    def __init__(
        self,
        *,
        initial_batch: Any,
        max_batch: Any,
        lr_scaling: Any = "adascale",
        max_local_batch: Any = None,
    ) -> None:
        self.initial_batch = _positive_int("initial_batch", initial_batch)
        self.max_batch = _positive_int("max_batch", max_batch)
        if self.max_batch < self.initial_batch:
            raise UserError(f"max_batch ({max_batch}) must be >= initial_batch ({initial_batch})")
        if lr_scaling not in LR_SCALINGS:
            raise UserError(f"unknown lr_scaling {lr_scaling!r}; choose one of: {', '.join(LR_SCALINGS)}")
        self.lr_scaling: str = lr_scaling
        self.max_local_batch = None if max_local_batch is None else _positive_int("max_local_batch", max_local_batch)
        # (nodes, replicas, local batch) -> recent seconds per micro-step
        self.step_times: dict[tuple[int, int, int], list[float]] = {}
        self.noise_scale: float | None = None  # phi in samples, fixed between two decisions
        self.progress = 0.0  # samples at initial_batch
        self.choice: Choice | None = None
        self.decisions: list[dict[str, Any]] = []  # each decision with what it was made from

    # -- measurements ------------------------------------------------------------------------

    def observe(self, nodes: int, choice: Choice, step_s: float) -> None:
        """Record one optimizer step's duration at `choice` (divided over its micro-steps)."""
        if step_s <= 0 or not math.isfinite(step_s):
            return
        times = self.step_times.setdefault((nodes, choice.replicas, choice.local_batch), [])
        times.append(step_s / choice.accum)
        del times[:-KEPT]

    def rows(self) -> list[tuple[int, int, int, float]]:
        """(nodes, replicas, local batch, median seconds per micro-step) per configuration measured."""
        return sorted((n, r, b, statistics.median(t)) for (n, r, b), t in self.step_times.items() if t)

    def model(self, rows: list[tuple[int, int, int, float]] | None = None) -> GoodputModel | None:
        """The goodput model fitted from `rows` (default: ours) and phi; None without both."""
        rows = self.rows() if rows is None else rows
        if self.noise_scale is None or not rows:
            return None
        params = fit_throughput([(float(n), float(r), float(b), t) for n, r, b, t in rows])
        return GoodputModel(
            params=params,
            init_batch=float(self.initial_batch),
            max_batch=float(self.max_batch),
            noise_scale=self.noise_scale,
        )

    # -- decisions ----------------------------------------------------------------------------

    def choose(self, nodes: int, replicas: int, step: int) -> Choice:
        """The configuration of best goodput on `replicas` replicas over `nodes` nodes; it becomes current."""
        replicas = max(1, int(replicas))
        rows = self.rows()
        model = self.model(rows)
        target = float(self.initial_batch) if model is None else float(model.optimal_batch(nodes, replicas))
        per_replica = target / replicas
        cap = self.max_local_batch or math.inf
        accum = max(1, math.ceil(per_replica / cap - 1e-9))
        local = max(1, round(per_replica / accum))
        if self.max_local_batch is not None:
            local = min(local, self.max_local_batch)
        while local > 1 and replicas * local * accum > self.max_batch:
            local -= 1
        self.choice = Choice(replicas, local, accum)
        self.decisions.append(
            {
                "step": step,
                "nodes": nodes,
                "replicas": replicas,
                "local_batch": local,
                "accum": accum,
                "global_batch": self.choice.global_batch,
                "target": target,
                "noise_scale": self.noise_scale,
                "rows": [list(r) for r in rows],
            }
        )
        if len(self.decisions) > DECISIONS_KEPT:
            # Drop the oldest decision that is not the first at its world size: resizes are kept.
            for i in range(1, len(self.decisions)):
                if self.decisions[i]["replicas"] == self.decisions[i - 1]["replicas"]:
                    del self.decisions[i]
                    break
        return self.choice

    def efficiency(self, batch: float) -> float:
        """Progress per sample at `batch` relative to one at initial_batch (1 while phi is unknown)."""
        if self.noise_scale is None:
            return 1.0
        return (self.noise_scale + self.initial_batch) / (self.noise_scale + batch)

    def lr_factor(self) -> float:
        """What the learning rate is multiplied by at the current choice."""
        if self.choice is None:
            return 1.0
        m = float(self.choice.global_batch)
        scale = m / self.initial_batch
        if self.lr_scaling == "linear":
            return scale
        if self.lr_scaling == "sqrt":
            return math.sqrt(scale)
        return scale * self.efficiency(m)  # AdaScale's gain

    def count(self, samples: float) -> None:
        """Add one optimizer step of `samples` at the current choice to the progress (in samples at M0)."""
        batch = self.choice.global_batch if self.choice is not None else self.initial_batch
        self.progress += samples * self.efficiency(batch)

    # -- checkpoints --------------------------------------------------------------------------

    def state_dict(self, noise_scale: float | None = None) -> dict[str, Any]:
        """What a resumed job needs to decide; `noise_scale`: the latest estimate, to decide with next."""
        return {
            "step_times": [[n, r, b, list(t)] for (n, r, b), t in self.step_times.items()],
            "noise_scale": self.noise_scale if noise_scale is None else noise_scale,
            "progress": self.progress,
            "decisions": list(self.decisions),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what state_dict() returned."""
        self.step_times = {(int(n), int(r), int(b)): [float(x) for x in t] for n, r, b, t in state["step_times"]}
        phi = state.get("noise_scale")
        self.noise_scale = None if phi is None else float(phi)
        self.progress = float(state["progress"])
        self.decisions = list(state.get("decisions", []))
