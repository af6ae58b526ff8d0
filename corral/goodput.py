"""Throughput and goodput model of data-parallel SGD, after Pollux (Qiao et al., OSDI'21, section 3).

Units: times in seconds, batch sizes in samples (a *total* batch is summed over
replicas, a *local* batch is per replica), throughput in samples per second.

- Iteration time (section 3.2): T = (T_grad^g + T_sync^g)^(1/g) with
  T_grad = alpha_c + beta_c * local_batch and T_sync = 0 for one replica,
  alpha_n + beta_n * (replicas - 2) when every replica is on one node,
  alpha_r + beta_r * (replicas - 2) across nodes. g >= 1 is the overlap of
  computation and communication (1: none, large: T -> max of the two).
- Statistical efficiency (section 3.1): EFFICIENCY(M) = (phi + M0) / (phi + M),
  phi the gradient noise scale and M0 the batch the job was tuned for; it is the
  progress one sample at batch M makes relative to one sample at M0.
- Goodput = THROUGHPUT(M) * EFFICIENCY(M): samples per second, counted as
  progress at the initial batch size M0.

The simulator evaluates these for every running job at every event, so the
scalar paths use `math` (no numpy overhead) and the batch-size optimisation is
memoised per (model, nodes, replicas).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import SupportsFloat, SupportsInt, cast

import numpy as np

# Scalars take the fast `math` path; arrays (or lists) are evaluated element-wise.
Values = float | int | np.ndarray | Sequence[float]
Result = float | np.ndarray

# Bisection steps over log(batch): the bracket is at most a few e-folds wide,
# so 2^-32 of it is far below a single sample.
_BISECT_STEPS = 32


@dataclass(frozen=True)
class ThroughputParams:
    """Iteration-time parameters of the Pollux model (seconds; beta_c in seconds per sample)."""

    alpha_c: float  # fixed compute time per iteration
    beta_c: float  # compute time per sample of the local batch
    alpha_n: float = 0.0  # synchronisation time, all replicas on one node (>= 2 replicas)
    beta_n: float = 0.0  # extra synchronisation per replica beyond 2, within a node
    alpha_r: float = 0.0  # synchronisation time across nodes
    beta_r: float = 0.0  # extra synchronisation per replica beyond 2, across nodes
    gamma: float = 1.0  # overlap of compute and sync, >= 1

    def __post_init__(self) -> None:
        values = (self.alpha_c, self.beta_c, self.alpha_n, self.beta_n, self.alpha_r, self.beta_r)
        if any(not math.isfinite(v) or v < 0 for v in values):
            raise ValueError(f"throughput parameters must be finite and >= 0: {self}")
        if self.alpha_c + self.beta_c <= 0:
            raise ValueError("alpha_c + beta_c must be > 0 (an iteration takes time)")
        if not (1.0 <= self.gamma < math.inf):
            raise ValueError(f"gamma must be >= 1, got {self.gamma}")

    def sync_time(self, num_nodes: int, num_replicas: int) -> float:
        """Seconds of gradient synchronisation per iteration (scalar)."""
        if num_replicas <= 1:
            return 0.0
        extra = max(num_replicas - 2, 0)
        if num_nodes <= 1:
            return self.alpha_n + self.beta_n * extra
        return self.alpha_r + self.beta_r * extra

    def step_time(self, num_nodes: Values, num_replicas: Values, local_batch: Values) -> Result:
        """Seconds per iteration for `num_replicas` replicas on `num_nodes` nodes at `local_batch` samples each."""
        if _is_scalar(num_nodes, num_replicas, local_batch):
            grad = self.alpha_c + self.beta_c * _float(local_batch)
            sync = self.sync_time(_int(num_nodes), _int(num_replicas))
            return _combine(grad, sync, self.gamma)
        n, r, m = np.broadcast_arrays(
            np.asarray(num_nodes, float), np.asarray(num_replicas, float), np.asarray(local_batch, float)
        )
        return _step_time_np(self.as_array()[:, None], n.ravel(), r.ravel(), m.ravel()).reshape(n.shape)

    def as_array(self) -> np.ndarray:
        """The seven parameters in field order."""
        return np.array([self.alpha_c, self.beta_c, self.alpha_n, self.beta_n, self.alpha_r, self.beta_r, self.gamma])


def _is_scalar(*values: object) -> bool:
    return not any(isinstance(v, (np.ndarray, list, tuple)) for v in values)


def _float(value: Values) -> float:
    """A value _is_scalar accepted, as a float."""
    return float(cast(SupportsFloat, value))


def _int(value: Values) -> int:
    """A value _is_scalar accepted, as an int."""
    return int(cast(SupportsInt, value))


def _combine(grad: float, sync: float, gamma: float) -> float:
    if sync <= 0.0:
        return grad
    if gamma == 1.0:
        return grad + sync
    # Factor out the larger term so x**gamma cannot overflow for large gamma.
    hi, lo = (grad, sync) if grad >= sync else (sync, grad)
    return float(hi * (1.0 + (lo / hi) ** gamma) ** (1.0 / gamma))


def _sync_np(p: np.ndarray, n: np.ndarray, r: np.ndarray) -> np.ndarray:
    extra = np.maximum(r - 2.0, 0.0)
    within = p[2] + p[3] * extra
    across = p[4] + p[5] * extra
    return np.where(r <= 1.0, 0.0, np.where(n <= 1.0, within, across))


def _step_time_np(p: np.ndarray, n: np.ndarray, r: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Vectorised step time; `p` is (7, ...) broadcastable against n, r, m."""
    grad = p[0] + p[1] * m
    sync = _sync_np(p, n, r)
    hi = np.maximum(grad, sync)
    lo = np.minimum(grad, sync)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ratio = np.where(hi > 0, lo / hi, 0.0)
        out: np.ndarray = hi * (1.0 + ratio ** p[6]) ** (1.0 / p[6])
        return out


@dataclass(frozen=True)
class GoodputModel:
    """Throughput, statistical efficiency and goodput of one training job (Pollux-style).

    `init_batch` (M0) is the total batch the job was tuned for; the job accepts any
    total batch in [init_batch, max_batch] (None: only init_batch) with at most
    `max_local_batch` samples per replica (None: no memory limit). `noise_scale`
    (phi, samples) is the gradient noise scale: 0 means a larger batch brings no
    statistical gain, so only throughput scaling at M0 counts.
    """

    params: ThroughputParams
    init_batch: float
    max_batch: float | None = None
    noise_scale: float = 0.0
    max_local_batch: float | None = None

    def __post_init__(self) -> None:
        if not self.init_batch > 0:
            raise ValueError(f"init_batch must be > 0, got {self.init_batch}")
        if self.max_batch is not None and not self.max_batch >= self.init_batch:
            raise ValueError(f"max_batch ({self.max_batch}) must be >= init_batch ({self.init_batch})")
        if not self.noise_scale >= 0:
            raise ValueError(f"noise_scale must be >= 0, got {self.noise_scale}")
        if self.max_local_batch is not None and not self.max_local_batch > 0:
            raise ValueError(f"max_local_batch must be > 0, got {self.max_local_batch}")

    def efficiency(self, batch: Values) -> Result:
        """Progress per sample at total batch `batch` relative to one at init_batch (<= 1 above M0)."""
        m0, phi = self.init_batch, self.noise_scale
        if _is_scalar(batch):
            return (phi + m0) / (phi + _float(batch))
        return (phi + m0) / (phi + np.asarray(batch, float))

    def throughput(self, num_nodes: Values, num_replicas: Values, batch: Values) -> Result:
        """Samples per second at total batch `batch` split evenly over the replicas."""
        if _is_scalar(num_nodes, num_replicas, batch):
            batch = _float(batch)
            return batch / self.params.step_time(num_nodes, num_replicas, batch / max(_int(num_replicas), 1))
        r = np.maximum(np.asarray(num_replicas, float), 1.0)
        b = np.asarray(batch, float)
        return b / self.params.step_time(num_nodes, r, b / r)

    def goodput(self, num_nodes: Values, num_replicas: Values, batch: Values | None = None) -> Result:
        """Throughput times efficiency (samples/s of progress at init_batch); batch None: the optimal one."""
        if batch is None:
            batch = self.optimal_batch(num_nodes, num_replicas)
        return self.throughput(num_nodes, num_replicas, batch) * self.efficiency(batch)

    def batch_range(self, num_replicas: int) -> tuple[float, float]:
        """The total batch sizes the job accepts on `num_replicas` replicas (samples)."""
        hi = self.max_batch if self.max_batch is not None else self.init_batch
        if self.max_local_batch is not None:
            hi = min(hi, self.max_local_batch * max(int(num_replicas), 1))
        return self.init_batch, max(self.init_batch, hi)

    def optimal_batch(self, num_nodes: Values, num_replicas: Values) -> Result:
        """The total batch in batch_range that maximises goodput (samples)."""
        if _is_scalar(num_nodes, num_replicas):
            return _optimal_batch_cached(self, _int(num_nodes), max(_int(num_replicas), 1))
        n, r = np.broadcast_arrays(np.asarray(num_nodes, float), np.asarray(num_replicas, float))
        out = _optimal_batch_np(_stack([self]), n.ravel()[None, :], np.maximum(r.ravel(), 1.0)[None, :])
        return out.reshape(n.shape)

    def speedup(self, num_nodes: Values, num_replicas: Values) -> Result:
        """Goodput at the optimal batch relative to one replica at its optimal batch (0 for 0 replicas)."""
        if _is_scalar(num_nodes, num_replicas):
            if _int(num_replicas) <= 0:
                return 0.0
            return self.goodput(num_nodes, num_replicas) / self._base_goodput()
        r = np.asarray(num_replicas, float)
        g = self.goodput(num_nodes, np.maximum(r, 1.0))
        return np.where(r > 0, g / self._base_goodput(), 0.0)

    def _base_goodput(self) -> float:
        return _float(self.goodput(1, 1))

    def speedup_table(self, max_replicas: int, devices_per_node: int) -> np.ndarray:
        """Speedup at k = 0..max_replicas devices packed on nodes of `devices_per_node` (index k)."""
        return speedup_tables([self], [max_replicas], devices_per_node)[0]


@lru_cache(maxsize=1 << 16)
def _optimal_batch_cached(model: GoodputModel, num_nodes: int, num_replicas: int) -> float:
    lo, hi = model.batch_range(num_replicas)
    if hi <= lo:
        return lo
    p = model.params
    phi = model.noise_scale
    r = float(num_replicas)
    sync = p.sync_time(num_nodes, num_replicas)
    a, b = math.log(lo), math.log(hi)
    # d log(goodput) / d log(M) decreases in M (see _slope_np), so bisect on its sign.
    for _ in range(_BISECT_STEPS):
        mid = 0.5 * (a + b)
        m = math.exp(mid)
        comp = p.beta_c * m / r
        grad = p.alpha_c + comp
        w = 1.0 if sync <= 0 else 1.0 / (1.0 + (sync / grad) ** p.gamma) if grad > 0 else 0.0
        slope = 1.0 - w * comp / grad - m / (phi + m)
        if slope > 0:
            a = mid
        else:
            b = mid
    return math.exp(0.5 * (a + b))


_FIELDS = 11  # 7 throughput parameters, then init_batch, max_batch, noise_scale, max_local_batch


def _stack(models: Sequence[GoodputModel]) -> np.ndarray:
    """(11, J, 1) parameter array of `models`, broadcastable against (1, K) configurations."""
    rows = np.empty((_FIELDS, len(models)))
    for j, mod in enumerate(models):
        p = mod.params
        rows[:, j] = (
            p.alpha_c,
            p.beta_c,
            p.alpha_n,
            p.beta_n,
            p.alpha_r,
            p.beta_r,
            p.gamma,
            mod.init_batch,
            mod.max_batch if mod.max_batch is not None else mod.init_batch,
            mod.noise_scale,
            mod.max_local_batch if mod.max_local_batch is not None else np.inf,
        )
    return rows[:, :, None]


def _slope_np(q: np.ndarray, n: np.ndarray, r: np.ndarray, m: np.ndarray) -> np.ndarray:
    """d log(goodput) / d log(M): 1 - elasticity of step time - M / (phi + M), decreasing in M."""
    comp = q[1] * m / r
    grad = q[0] + comp
    sync = _sync_np(q, n, r)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        w = np.where(sync > 0, 1.0 / (1.0 + (sync / grad) ** q[6]), 1.0)
    out: np.ndarray = 1.0 - w * comp / grad - m / (q[9] + m)
    return out


def _optimal_batch_np(q: np.ndarray, n: np.ndarray, r: np.ndarray) -> np.ndarray:
    lo = q[7] + 0.0 * r
    hi = np.maximum(q[7], np.minimum(q[8], q[10] * r))
    a, b = np.log(lo), np.log(hi)
    for _ in range(_BISECT_STEPS):
        mid = 0.5 * (a + b)
        up = _slope_np(q, n, r, np.exp(mid)) > 0
        a = np.where(up, mid, a)
        b = np.where(up, b, mid)
    out: np.ndarray = np.exp(0.5 * (a + b))
    return out


def _goodput_np(q: np.ndarray, n: np.ndarray, r: np.ndarray, m: np.ndarray) -> np.ndarray:
    step = _step_time_np(q, n, r, m / r)
    out: np.ndarray = m / step * (q[9] + q[7]) / (q[9] + m)
    return out


# Speedup tables by (model, max_replicas, devices_per_node); the simulator and
# the live loop ask for the same jobs round after round, so this is what makes
# Pollux's decision time small after the first round.
_TABLES: OrderedDict[tuple[GoodputModel, int, int], np.ndarray] = OrderedDict()
_TABLES_MAX = 8192


def speedup_tables(
    models: Sequence[GoodputModel], max_replicas: Sequence[int], devices_per_node: int
) -> list[np.ndarray]:
    """Speedup tables (index k = devices, packed on nodes of `devices_per_node`) for many models at once."""
    dpn = max(int(devices_per_node), 1)
    out: list[np.ndarray | None] = []
    todo: dict[tuple[GoodputModel, int, int], int] = {}
    for mod, k in zip(models, max_replicas, strict=True):
        key = (mod, max(int(k), 0), dpn)
        table = _TABLES.get(key)
        if table is None:
            todo.setdefault(key, len(todo))
        out.append(table)
    if todo:
        fresh: dict[tuple[GoodputModel, int, int], np.ndarray] = {}
        # Group by table width (to the next power of two) so one long table does
        # not pad every short one.
        groups: dict[int, list[tuple[GoodputModel, int, int]]] = {}
        for key in todo:
            groups.setdefault(max(key[1], 1).bit_length(), []).append(key)
        for keys in groups.values():
            fresh.update(_compute_tables(keys, dpn))
        for key, table in fresh.items():
            _TABLES[key] = table
            if len(_TABLES) > _TABLES_MAX:
                _TABLES.popitem(last=False)
        out = [
            t if t is not None else fresh[(mod, max(int(k), 0), dpn)]
            for t, mod, k in zip(out, models, max_replicas, strict=True)
        ]
    return out  # type: ignore[return-value]


def _compute_tables(
    keys: Sequence[tuple[GoodputModel, int, int]], dpn: int
) -> dict[tuple[GoodputModel, int, int], np.ndarray]:
    width = max(k for _, k, _ in keys)
    q = _stack([mod for mod, _, _ in keys])
    r = np.arange(1, width + 1, dtype=float)[None, :]
    n = np.ceil(r / dpn)
    # Column 0 is the one-replica baseline every speedup is relative to.
    r = np.concatenate([np.ones((1, 1)), r], axis=1)
    n = np.concatenate([np.ones((1, 1)), n], axis=1)
    best = _optimal_batch_np(q, n, r)
    good = _goodput_np(q, n, r, best)
    speed = good / good[:, :1]
    speed[:, 0] = 0.0
    out = {}
    for key, row in zip(keys, speed, strict=True):
        table = row[: key[1] + 1].copy()
        table.setflags(write=False)
        out[key] = table
    return out


def _identifiable(
    within: np.ndarray, across: np.ndarray, r: np.ndarray, m: np.ndarray, t: np.ndarray
) -> tuple[list[int], np.ndarray, dict[int, int]]:
    """(indices of the free parameters, values of the pinned ones, tied index -> source index).

    Cross-node sync equals within-node sync when only one kind was observed;
    retrogression (beta) is zero without more than two replicas; gamma is 1
    without any multi-replica point; with a single local batch size, fixed and
    per-sample compute cannot be told apart, so alpha_c is pinned.
    """
    free = [
        True,
        True,
        bool(within.any()),
        bool((within & (r > 2)).any()),
        bool(across.any()),
        bool((across & (r > 2)).any()),
        bool((within | across).any()),
    ]
    fixed = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0])
    tie: dict[int, int] = {}
    if not free[4] and free[2]:
        tie[4] = 2  # no cross-node data: assume it syncs like within a node
    if not free[5] and free[3]:
        tie[5] = 3
    if not free[2] and free[4]:
        tie[2] = 4  # only cross-node data: within a node is taken to be no faster
    if not free[3] and free[5]:
        tie[3] = 5
    if len(np.unique(m)) == 1:
        # Half and half, as AdaptDL does, of the fastest step (a bound on compute).
        free[0] = False
        fixed[0] = float(np.min(t)) / 2.0
    return [i for i in range(7) if free[i]], fixed, tie


def _log_step_time_jacobian(
    p: np.ndarray,
    n: np.ndarray,
    r: np.ndarray,
    m: np.ndarray,
    within: np.ndarray,
    across: np.ndarray,
    extra: np.ndarray,
) -> np.ndarray:
    """d log(step time) / d (the 7 parameters), one row per observation."""
    grad = p[0] + p[1] * m
    sync = np.where(within, p[2] + p[3] * extra, np.where(across, p[4] + p[5] * extra, 0.0))
    gamma = p[6]
    hi = np.maximum(grad, sync)
    lo = np.minimum(grad, sync)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(lo > 0, (lo / hi) ** gamma, 0.0)  # (lo/hi)^gamma in [0, 1]
        # w = grad^g / (grad^g + sync^g): the compute share of d log T.
        w = np.where(grad >= sync, 1.0 / (1.0 + q), q / (1.0 + q))
        d_grad = w / grad
        d_sync = np.where(sync > 0, (1.0 - w) / sync, 0.0)
        log_ratio = np.where(lo > 0, np.log(lo / hi), 0.0)
    d_gamma = q * log_ratio / ((1.0 + q) * gamma) - np.log1p(q) / gamma**2
    jac = np.empty((len(grad), 7))
    jac[:, 0] = d_grad
    jac[:, 1] = d_grad * m
    jac[:, 2] = np.where(within, d_sync, 0.0)
    jac[:, 3] = jac[:, 2] * extra
    jac[:, 4] = np.where(across, d_sync, 0.0)
    jac[:, 5] = jac[:, 4] * extra
    jac[:, 6] = d_gamma
    return jac


# A job without a fitted model is assumed to scale like a mid-sized image model:
# sub-linear within a node, worse across nodes, with a moderate noise scale.
DEFAULT_MODEL = GoodputModel(
    params=ThroughputParams(
        alpha_c=0.02, beta_c=0.001, alpha_n=0.01, beta_n=0.001, alpha_r=0.04, beta_r=0.002, gamma=2.0
    ),
    init_batch=128.0,
    max_batch=8192.0,
    noise_scale=2048.0,
    max_local_batch=256.0,
)


def fit_throughput(observations: Iterable[Sequence[float]]) -> ThroughputParams:
    """Fit ThroughputParams to (num_nodes, num_replicas, local_batch, step_time_seconds) observations.

    Bounded least squares on log step time (relative error), with an analytic
    Jacobian. Parameters the data cannot identify are tied or pinned, in the
    spirit of AdaptDL's fit_perf_params (see _identifiable).
    """
    from scipy.optimize import least_squares, lsq_linear  # heavy import, only needed here

    obs = np.asarray(list(observations), dtype=float)
    if obs.ndim != 2 or obs.shape[1] != 4 or len(obs) == 0:
        raise ValueError("observations must be (num_nodes, num_replicas, local_batch, step_time) rows")
    n, r, m, t = obs.T
    if np.any(n < 1) or np.any(r < n) or np.any(m <= 0) or np.any(t <= 0) or not np.all(np.isfinite(obs)):
        raise ValueError("observations need 1 <= num_nodes <= num_replicas, local_batch > 0, step_time > 0")

    multi = r > 1
    within = multi & (n <= 1)
    across = n > 1
    idx, fixed, tie = _identifiable(within, across, r, m, t)

    def full(x: np.ndarray) -> np.ndarray:
        p = fixed.copy()
        p[idx] = x
        for dst, src in tie.items():
            p[dst] = p[src]
        return p

    def residuals(x: np.ndarray) -> np.ndarray:
        p = full(x)
        out: np.ndarray = np.log(_step_time_np(p, n, r, m)) - np.log(t)
        return out

    extra = np.maximum(r - 2.0, 0.0)
    # d T / d (alpha_c, beta_c, alpha_n, beta_n, alpha_r, beta_r) when gamma = 1 (T is then linear).
    design = np.column_stack([np.ones_like(t), m, within, within * extra, across, across * extra]).astype(float)

    def reduce(columns: np.ndarray) -> np.ndarray:
        """Full-parameter columns to free-parameter columns (tied parameters add to their source)."""
        columns = columns.copy()
        for dst, src in tie.items():
            columns[:, src] += columns[:, dst]
        return columns[:, idx]

    def jacobian(x: np.ndarray) -> np.ndarray:
        return reduce(_log_step_time_jacobian(full(x), n, r, m, within, across, extra))

    lower = np.array([1e-9, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0])[idx]
    upper = np.array([np.inf] * 6 + [10.0])[idx]
    scale = float(np.mean(t))
    x_scale = np.array(
        [
            scale,
            scale / float(np.mean(m)),
            scale,
            scale / max(float(np.mean(extra)), 1.0),
            scale,
            scale / max(float(np.mean(extra)), 1.0),
            1.0,
        ]
    )[idx]
    # Start from the exact answer for gamma = 1 (T is then linear in the other
    # six: a bounded linear least squares on relative error), then from larger
    # overlaps, since gamma makes the problem non-convex.
    lin_free = [i for i in idx if i < 6]
    pinned = [i for i in range(6) if i not in idx and i not in tie]
    target = t - design[:, pinned] @ fixed[pinned]
    columns = reduce(np.column_stack([design, np.zeros_like(t)]))[:, : len(lin_free)]
    with np.errstate(all="ignore"):  # exact fits of under-determined data divide 0 by 0 inside
        lin = lsq_linear(columns / t[:, None], target / t, bounds=(lower[: len(lin_free)], upper[: len(lin_free)]))
    base = fixed.copy()
    base[lin_free] = lin.x if np.all(np.isfinite(lin.x)) else np.maximum(lower[: len(lin_free)], 1e-3 * scale)
    starts = []
    for gamma0 in (1.0, 2.0, 4.0) if 6 in idx else (1.0,):
        x0 = base.copy()
        x0[6] = gamma0
        starts.append(np.clip(x0[idx], lower, upper))
    best = None
    for x0 in starts:
        res = least_squares(
            residuals,
            x0,
            jac=jacobian,
            bounds=(lower, upper),
            x_scale=x_scale,
            xtol=1e-10,
            ftol=1e-10,
            gtol=1e-10,
            max_nfev=100,
        )
        if best is None or res.cost < best.cost:
            best = res
        if best.cost < 1e-12 * len(t):  # within ~1e-6 relative error: other starts cannot matter
            break
    assert best is not None
    p = full(best.x)
    return ThroughputParams(*(float(v) for v in p))
