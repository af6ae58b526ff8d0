"""The Pollux throughput / goodput model: formulas, fitting, fast paths agreeing with vector paths."""

from __future__ import annotations

import math

import numpy as np
import pytest

from corral.goodput import (
    DEFAULT_MODEL,
    GoodputModel,
    ThroughputParams,
    fit_throughput,
    speedup_tables,
)

TRUE = ThroughputParams(alpha_c=0.05, beta_c=0.002, alpha_n=0.02, beta_n=0.003, alpha_r=0.1, beta_r=0.01, gamma=1.6)


def grid(params: ThroughputParams, nodes=(1, 2, 4), per_node=(1, 2, 4), local=(16, 32, 64, 128)):
    return [(n, n * k, m, params.step_time(n, n * k, m)) for n in nodes for k in per_node for m in local]


def test_step_time_follows_the_pollux_formula():
    p = TRUE
    # One replica: no synchronisation, T = T_grad.
    assert p.step_time(1, 1, 32) == pytest.approx(0.05 + 0.002 * 32)
    # Four replicas on one node: T_sync = alpha_n + beta_n * (4 - 2).
    grad, sync = 0.05 + 0.002 * 32, 0.02 + 0.003 * 2
    assert p.step_time(1, 4, 32) == pytest.approx((grad**1.6 + sync**1.6) ** (1 / 1.6))
    # Eight replicas on two nodes: the cross-node terms.
    sync = 0.1 + 0.01 * 6
    assert p.step_time(2, 8, 32) == pytest.approx((grad**1.6 + sync**1.6) ** (1 / 1.6))
    # Array inputs give the same numbers.
    arr = p.step_time(np.array([1, 1, 2]), np.array([1, 4, 8]), np.array([32, 32, 32]))
    assert arr == pytest.approx([p.step_time(1, 1, 32), p.step_time(1, 4, 32), p.step_time(2, 8, 32)])


def test_fit_recovers_known_parameters():
    fitted = fit_throughput(grid(TRUE))
    for name in ("alpha_c", "beta_c", "alpha_n", "beta_n", "alpha_r", "beta_r", "gamma"):
        assert getattr(fitted, name) == pytest.approx(getattr(TRUE, name), rel=1e-3, abs=1e-6), name


def test_fit_predicts_within_two_percent_under_noise():
    rng = np.random.default_rng(0)
    noisy = [(n, r, m, t * math.exp(rng.normal(0, 0.01))) for n, r, m, t in grid(TRUE)]
    fitted = fit_throughput(noisy)
    for n, r, m, t in grid(TRUE, local=(8, 24, 100, 200)):  # also between and beyond the observed batches
        assert fitted.step_time(n, r, m) == pytest.approx(t, rel=0.02)


def test_fit_without_multi_node_points_assumes_nodes_sync_alike():
    fitted = fit_throughput(grid(TRUE, nodes=(1,)))
    assert fitted.alpha_r == fitted.alpha_n and fitted.beta_r == fitted.beta_n
    assert fitted.step_time(1, 4, 64) == pytest.approx(TRUE.step_time(1, 4, 64), rel=1e-3)


def test_fit_with_one_point_splits_compute_time_evenly():
    fitted = fit_throughput([(1, 1, 32, 0.1)])
    assert fitted.alpha_c == pytest.approx(0.05)
    assert fitted.step_time(1, 1, 32) == pytest.approx(0.1)
    assert fitted.gamma == 1.0 and fitted.alpha_n == fitted.alpha_r == 0.0


def test_fit_matches_any_few_observations():
    # What a running job reports: a handful of configurations, often fewer than
    # the seven parameters. Whatever the subset, the fit reproduces what was seen.
    import random

    rng = random.Random(0)
    configs = [(n, n * k, m) for n in (1, 2, 4) for k in (1, 2, 4) for m in (16, 32, 64, 128)]
    for _ in range(40):
        an, bn = rng.uniform(0, 0.1), rng.uniform(0, 0.01)
        true = ThroughputParams(
            rng.uniform(0, 0.1),
            rng.uniform(1e-4, 2e-3),
            an,
            bn,
            an + rng.uniform(0, 0.3),
            bn + rng.uniform(0, 0.02),
            rng.uniform(1, 3),
        )
        seen = [(n, r, m, true.step_time(n, r, m)) for n, r, m in rng.sample(configs, rng.randint(1, 8))]
        fitted = fit_throughput(seen)
        for n, r, m, t in seen:
            assert fitted.step_time(n, r, m) == pytest.approx(t, rel=0.01)


def test_fit_rejects_bad_observations():
    with pytest.raises(ValueError):
        fit_throughput([])
    with pytest.raises(ValueError):
        fit_throughput([(2, 1, 32, 0.1)])  # more nodes than replicas


def test_efficiency_is_pollux_gain_per_sample():
    m = GoodputModel(TRUE, init_batch=100, max_batch=1000, noise_scale=400)
    assert m.efficiency(100) == 1.0
    assert m.efficiency(500) == pytest.approx((400 + 100) / (400 + 500))
    assert m.goodput(1, 1, 500) == pytest.approx(m.throughput(1, 1, 500) * m.efficiency(500))
    assert m.throughput(1, 2, 500) == pytest.approx(500 / TRUE.step_time(1, 2, 250))


def test_optimal_batch_matches_the_closed_form_without_overlap():
    # gamma = 1: goodput ~ M / ((a + b M)(phi + M)), a = alpha_c + T_sync,
    # b = beta_c / replicas, maximised at M* = sqrt(a * phi / b).
    p = ThroughputParams(alpha_c=0.05, beta_c=0.002, alpha_n=0.02, beta_n=0.003, alpha_r=0.1, beta_r=0.01)
    m = GoodputModel(p, init_batch=32, max_batch=100_000, noise_scale=2000)
    for n, r in [(1, 1), (1, 4), (2, 8)]:
        a = 0.05 + p.sync_time(n, r)
        expected = math.sqrt(a * 2000 / (0.002 / r))
        assert m.optimal_batch(n, r) == pytest.approx(expected, rel=1e-6)
        assert m.optimal_batch(np.array([n]), np.array([r]))[0] == pytest.approx(expected, rel=1e-6)


def test_optimal_batch_respects_the_limits():
    fixed = GoodputModel(TRUE, init_batch=128)
    assert fixed.optimal_batch(2, 8) == pytest.approx(128)
    capped = GoodputModel(TRUE, init_batch=64, max_batch=10_000, noise_scale=1e6, max_local_batch=100)
    assert capped.optimal_batch(1, 2) == pytest.approx(200)  # memory bound: 2 x 100
    no_gain = GoodputModel(TRUE, init_batch=64, max_batch=10_000, noise_scale=0.0)
    assert no_gain.optimal_batch(1, 4) == pytest.approx(64)


def test_speedup_paths_agree():
    m = DEFAULT_MODEL
    assert m.speedup(1, 1) == pytest.approx(1.0)
    assert m.speedup(1, 0) == 0.0
    table = m.speedup_table(16, 4)
    assert table[0] == 0.0 and len(table) == 17
    for k in range(1, 17):
        assert table[k] == pytest.approx(m.speedup(math.ceil(k / 4), k), rel=1e-9)
    vec = m.speedup(np.array([1, 1, 2]), np.array([1, 4, 8]))
    assert vec == pytest.approx([m.speedup(1, 1), m.speedup(1, 4), m.speedup(2, 8)])
    # Scaling is sub-linear and better within a node than across.
    assert 1 < table[2] < 2 and table[4] < 4 and table[5] - table[4] < table[4] - table[3]


def test_speedup_tables_batch_many_models():
    models = [GoodputModel(TRUE, init_batch=64, max_batch=4096, noise_scale=s) for s in (100, 1000, 10_000)]
    tables = speedup_tables(models, [4, 8, 2], 4)
    for model, k, table in zip(models, [4, 8, 2], tables, strict=True):
        assert len(table) == k + 1
        assert table == pytest.approx(model.speedup_table(k, 4))
    # A larger noise scale lets more replicas help.
    assert tables[0][2] < tables[1][2] < tables[2][2]


def test_models_are_frozen_hashable_values():
    a = GoodputModel(TRUE, init_batch=64)
    assert a == GoodputModel(TRUE, init_batch=64) and hash(a) == hash(GoodputModel(TRUE, init_batch=64))
    with pytest.raises(AttributeError):
        a.init_batch = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    "kwargs",
    [{"init_batch": 0}, {"init_batch": 64, "max_batch": 32}, {"init_batch": 64, "noise_scale": -1}],
)
def test_model_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        GoodputModel(TRUE, **kwargs)


def test_params_reject_bad_values():
    with pytest.raises(ValueError):
        ThroughputParams(alpha_c=-1, beta_c=0.1)
    with pytest.raises(ValueError):
        ThroughputParams(alpha_c=0.1, beta_c=0.1, gamma=0.5)
