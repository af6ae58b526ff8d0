"""The gradient noise scale (McCandlish et al. 2018), estimated from two batch sizes as AdaptDL does.

With the squared norm of a gradient over a small batch b (one replica's,
before the all-reduce) and over a big batch B (the replicas' average),

    |G|^2 ~ (B |g_B|^2 - b |g_b|^2) / (B - b)        the true gradient's squared norm
    S     ~ (|g_b|^2 - |g_B|^2) / (1/b - 1/B)        the trace of the per-sample covariance

are unbiased; each is smoothed with a bias-corrected moving average (as Adam
corrects its moments) before their ratio, the noise scale B_noise = S / |G|^2:
the batch size beyond which a bigger batch stops shortening training in steps.
One replica has no second batch size: two successive steps of batch b stand
for two replicas, b and 2b. Pure arithmetic, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class NoiseScale:
    """Smoothed estimates of |G|^2 and S from (small-batch, big-batch) squared gradient norms."""

    beta: float = 0.95  # smoothing of each estimate (bias-corrected)
    _sqr: float = 0.0
    _var: float = 0.0
    _weight: float = 0.0  # 1 - beta^t: the bias correction
    updates: int = 0

    def update(self, small_sq: float, small_batch: float, big_sq: float, big_batch: float) -> None:
        """Fold in one observation: |g|^2 over `small_batch` samples and over `big_batch` > small_batch."""
        if big_batch <= small_batch or small_batch <= 0:
            raise ValueError(f"need 0 < small batch < big batch, got {small_batch} and {big_batch}")
        sqr = (big_batch * big_sq - small_batch * small_sq) / (big_batch - small_batch)
        var = (small_sq - big_sq) / (1.0 / small_batch - 1.0 / big_batch)
        self._sqr = self.beta * self._sqr + (1 - self.beta) * sqr
        self._var = self.beta * self._var + (1 - self.beta) * var
        self._weight = self.beta * self._weight + (1 - self.beta)
        self.updates += 1

    @property
    def grad_sqr(self) -> float:
        """The smoothed estimate of |G|^2 (0 before any update)."""
        return self._sqr / self._weight if self._weight else 0.0

    @property
    def grad_var(self) -> float:
        """The smoothed estimate of S, the trace of the per-sample gradient covariance."""
        return self._var / self._weight if self._weight else 0.0

    @property
    def noise_scale(self) -> float | None:
        """B_noise = S / |G|^2, or None until the estimates make sense (|G|^2 > 0, S >= 0)."""
        sqr, var = self.grad_sqr, self.grad_var
        if self.updates == 0 or sqr <= 0 or var < 0:
            return None
        return var / sqr

    def state_dict(self) -> dict[str, float]:
        """The smoothed sums and their weight, for a checkpoint."""
        return {"sqr": self._sqr, "var": self._var, "weight": self._weight, "updates": float(self.updates)}

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Continue from what state_dict() returned."""
        self._sqr, self._var, self._weight = float(state["sqr"]), float(state["var"]), float(state["weight"])
        self.updates = int(state["updates"])
