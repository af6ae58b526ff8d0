"""The gradient noise scale estimator against gradients drawn with a known true gradient and noise."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.runtime.gns import NoiseScale


def simulate(g_norm: float, trace: float, b: int, replicas: int, steps: int, seed: int = 0) -> NoiseScale:
    """Per-replica gradients G + noise with per-sample covariance (trace/d) I, averaged over b samples."""
    rng = np.random.default_rng(seed)
    d = 200
    true = np.full(d, g_norm / np.sqrt(d))
    est = NoiseScale(beta=0.99)
    for _ in range(steps):
        local = true + rng.normal(0, np.sqrt(trace / d / b), size=(replicas, d))
        avg = local.mean(axis=0)
        est.update(float(local[0] @ local[0]), b, float(avg @ avg), b * replicas)
    return est


@pytest.mark.parametrize("replicas", [2, 4])
def test_estimates_converge_to_the_true_values(replicas: int) -> None:
    est = simulate(g_norm=2.0, trace=400.0, b=32, replicas=replicas, steps=4000)
    assert est.grad_sqr == pytest.approx(4.0, rel=0.1)
    assert est.grad_var == pytest.approx(400.0, rel=0.1)
    assert est.noise_scale == pytest.approx(100.0, rel=0.15)


def test_bias_correction_makes_the_first_estimate_unsmoothed() -> None:
    est = NoiseScale(beta=0.9)
    est.update(small_sq=10.0, small_batch=8, big_sq=4.0, big_batch=16)
    # |G|^2 = (16*4 - 8*10) / 8 = -2; S = (10 - 4) / (1/8 - 1/16) = 96: one observation, returned as is.
    assert est.grad_sqr == pytest.approx(-2.0) and est.grad_var == pytest.approx(96.0)
    assert est.noise_scale is None  # |G|^2 <= 0 makes no sense yet


@settings(max_examples=50, deadline=None)
@given(small=st.floats(0.1, 100), big=st.floats(0.1, 100), b=st.integers(1, 64), k=st.integers(2, 8))
def test_noiseless_gradients_have_zero_variance(small: float, big: float, b: int, k: int) -> None:
    est = NoiseScale()
    est.update(small, b, small, b * k)  # the same norm at both batch sizes: no noise
    assert est.grad_var == pytest.approx(0.0, abs=1e-6 * max(1.0, small * b))
    assert est.grad_sqr == pytest.approx(small)


def test_batch_sizes_must_differ() -> None:
    with pytest.raises(ValueError, match="small batch < big batch"):
        NoiseScale().update(1.0, 8, 1.0, 8)
