"""Adaptive batch size: bad options, the choice against the goodput model by hand, and a resized real job."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import corral
from corral.errors import UserError
from corral.goodput import GoodputModel, ThroughputParams, fit_throughput
from corral.runtime.adaptive import AdaptiveBatch, Choice
from tests.conftest import WORKERS, run_corral

SCRIPT = WORKERS / "adaptive_trainer.py"


# -- options -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"initial_batch": 64, "max_batch": 32}, "max_batch (32) must be >= initial_batch (64)"),
        ({"initial_batch": 0, "max_batch": 32}, "initial_batch must be an integer >= 1, got 0"),
        ({"initial_batch": -4, "max_batch": 32}, "initial_batch must be an integer >= 1, got -4"),
        ({"initial_batch": "big", "max_batch": 32}, "initial_batch must be an integer >= 1, got 'big'"),
        ({"initial_batch": 8, "max_batch": 32, "lr_scaling": "cubic"}, "unknown lr_scaling 'cubic'"),
        ({"initial_batch": 8, "max_batch": 32, "max_local_batch": 0}, "max_local_batch must be an integer >= 1"),
        ({"initial_batch": 8}, "needs initial_batch= and max_batch="),
        ({"initial_batch": 8, "max_batch": 32, "grad_accum": 2}, "chooses its accumulation steps"),
        ({"initial_batch": 8, "max_batch": 32, "strategy": "ps"}, "needs strategy 'ddp'"),
        ({"initial_batch": 8, "max_batch": 32, "local_sgd": 4}, "needs the gradient noise scale"),
        ({"initial_batch": 8, "max_batch": 32, "compression": "powersgd:1"}, "needs the gradient noise scale"),
        ({"initial_batch": 8, "max_batch": 32, "noise_scale": False}, "needs the gradient noise scale"),
    ],
)
def test_bad_adaptive_options_are_one_user_error(kwargs: dict, message: str) -> None:
    with pytest.raises(UserError) as err:
        corral.init(batch_size="adaptive", **kwargs)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"batch_size": "huge"}, "batch_size must be an integer >= 1 or 'adaptive', got 'huge'"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1 or 'adaptive', got 0"),
        ({"initial_batch": 8}, "initial_batch only apply with batch_size='adaptive'"),
        ({"lr_scaling": "sqrt"}, "lr_scaling only apply with batch_size='adaptive'"),
    ],
)
def test_adaptive_options_without_an_adaptive_batch_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        corral.init(**kwargs)


def test_prepare_takes_no_batch_size_under_an_adaptive_batch() -> None:
    job = corral.init(batch_size="adaptive", initial_batch=8, max_batch=64)
    net = nn.Linear(4, 1)
    data = TensorDataset(torch.randn(32, 4), torch.randn(32, 1))
    with pytest.raises(UserError, match="leave batch_size out of prepare"):
        job.prepare(net, torch.optim.SGD(net.parameters(), lr=0.1), data, batch_size=8)
    job.finish()


# -- the choice, by hand ---------------------------------------------------------------------------


def _measured(phi: float | None) -> AdaptiveBatch:
    """Step times of T = 1 ms + 0.01 ms per sample at one replica, batches 32 and 64."""
    ab = AdaptiveBatch(initial_batch=32, max_batch=4096)
    for b in (32, 64):
        for _ in range(5):
            ab.observe(1, Choice(1, b, 1), 1e-3 + 1e-5 * b)
    ab.noise_scale = phi
    return ab


def test_without_a_noise_scale_the_job_stays_at_the_initial_batch() -> None:
    ab = _measured(None)
    assert ab.choose(1, 4, step=0) == Choice(4, 8, 1)
    assert ab.lr_factor() == 1.0
    ab.count(32)
    assert ab.progress == 32  # every sample counts at the initial batch


def test_the_choice_is_the_goodput_models_optimum_by_hand() -> None:
    ab = _measured(phi=800.0)
    choice = ab.choose(1, 1, step=0)
    # One replica, no sync: goodput slope 1 - bM/(a + bM) - M/(phi + M) = 0 with a = 1e-3,
    # b = 1e-5 gives a / (a + bM) = M / (phi + M): b M^2 = a phi, M = sqrt(a phi / b) = sqrt(80000).
    assert choice.global_batch == round(math.sqrt(1e-3 * 800 / 1e-5))
    fitted = fit_throughput([(1, 1, 32, 1e-3 + 32e-5), (1, 1, 64, 1e-3 + 64e-5)])
    model = GoodputModel(params=fitted, init_batch=32, max_batch=4096, noise_scale=800.0)
    assert abs(choice.global_batch - float(model.optimal_batch(1, 1))) < 1
    # Four replicas (no sync measured yet: assumed free) split a batch twice as big.
    four = ab.choose(1, 4, step=1)
    assert four.local_batch == round(math.sqrt(4 * 1e-3 * 800 / 1e-5) / 4)
    assert ab.decisions[-1]["target"] == pytest.approx(float(model.optimal_batch(1, 4)))


def test_accumulation_only_beyond_the_local_batch_cap() -> None:
    ab = _measured(phi=800.0)
    ab.max_local_batch = 100
    choice = ab.choose(1, 1, step=0)  # the optimum, 283, needs three micro-steps of at most 100
    assert (choice.accum, choice.local_batch) == (3, 94)
    assert choice.global_batch <= ab.max_batch


def test_lr_scaling_rules_and_progress_by_hand() -> None:
    for rule, expected in (("linear", 4.0), ("sqrt", 2.0), ("adascale", 4.0 * (96 + 32) / (96 + 128))):
        ab = AdaptiveBatch(initial_batch=32, max_batch=128, lr_scaling=rule)
        ab.noise_scale = 96.0
        ab.choice = Choice(4, 32, 1)  # 128 = 4 x the initial batch
        assert ab.lr_factor() == pytest.approx(expected)
        ab.count(128)
        assert ab.progress == pytest.approx(128 * (96 + 32) / (96 + 128))  # samples at the initial batch


def test_state_round_trips() -> None:
    ab = _measured(phi=500.0)
    ab.choose(1, 2, step=3)
    ab.count(64)
    again = AdaptiveBatch(initial_batch=32, max_batch=4096)
    again.load_state_dict(json.loads(json.dumps(ab.state_dict())))
    assert again.rows() == ab.rows() and again.progress == ab.progress and again.noise_scale == 500.0
    assert again.choose(1, 2, step=3) == ab.choice


def test_a_fixed_model_bounds_the_batch() -> None:
    ab = _measured(phi=1e9)  # every sample counts: only throughput matters, so the biggest batch
    params = ThroughputParams(alpha_c=1e-3, beta_c=1e-5)
    assert GoodputModel(params=params, init_batch=32, max_batch=4096, noise_scale=1e9).optimal_batch(1, 1) > 4000
    assert ab.choose(1, 1, step=0).global_batch == 4096


# -- a real job, resized ------------------------------------------------------------------------------


def test_resized_adaptive_job_follows_its_model_and_matches_the_fixed_batch_accuracy(tmp_path) -> None:
    """1 -> 4 -> 2 workers: each decision is the fitted model's optimum; accuracy within 1 point of B0 fixed."""
    fixed, adaptive = tmp_path / "fixed", tmp_path / "adaptive"
    ref = run_corral("run", "--nproc", "1", str(SCRIPT), "--out", str(fixed))
    assert ref.returncode == 0, ref.stderr
    runs = [("1", ["--stop-at", "4"], 75), ("4", ["--stop-at", "8"], 75), ("2", [], 0)]
    for nproc, extra, code in runs:
        got = run_corral("run", "--nproc", nproc, str(SCRIPT), "--out", str(adaptive), "--adaptive", *extra)
        assert got.returncode == code, got.stdout + got.stderr
        assert "adaptive batch:" in got.stdout
    base = json.loads((fixed / "result.json").read_text())
    result = json.loads((adaptive / "result.json").read_text())
    state = result["adaptive"]
    assert state["progress"] >= 24 * 1437  # 24 epochs' worth of progress at the initial batch
    assert result["steps"] < base["steps"]  # bigger batches: fewer optimizer steps for it
    decisions = state["decisions"]
    by_replicas = {d["replicas"] for d in decisions}
    assert by_replicas == {1, 2, 4}  # the first decision at each world size is kept
    checked = 0
    for d in decisions:
        if d["noise_scale"] is None or not d["rows"]:
            assert d["global_batch"] == 32 // d["replicas"] * d["replicas"]
            continue
        params = fit_throughput([(n, r, b, t) for n, r, b, t in d["rows"]])
        model = GoodputModel(params=params, init_batch=32, max_batch=256, noise_scale=d["noise_scale"])
        assert d["target"] == pytest.approx(float(model.optimal_batch(d["nodes"], d["replicas"])), rel=1e-6)
        assert abs(d["local_batch"] * d["replicas"] - d["target"]) <= d["replicas"]
        checked += 1
    assert checked >= 3
    # More replicas, a bigger batch, as the model predicts (once the noise scale is known).
    assert max(d["global_batch"] for d in decisions if d["replicas"] == 4) > 32
    assert abs(result["accuracy"] - base["accuracy"]) <= 0.01, (result["accuracy"], base["accuracy"])


def test_max_batch_below_initial_batch_exits_2_with_one_line(tmp_path) -> None:
    got = run_corral(
        "run", "--nproc", "1", str(SCRIPT), "--out", str(tmp_path), "--adaptive", "--batch", "64", "--max-batch", "32"
    )
    assert got.returncode == 2, got.stdout + got.stderr
    errors = [line for line in (got.stdout + got.stderr).splitlines() if "error:" in line]
    assert len(errors) == 1 and "max_batch (32) must be >= initial_batch (64)" in errors[0]
    assert "Traceback" not in got.stdout + got.stderr
    assert not (tmp_path / "checkpoint.pt").exists() and not list(tmp_path.glob("*.pt"))


def test_decisions_keep_every_resize_when_they_roll_off() -> None:
    ab = _measured(phi=500.0)
    for step, replicas in enumerate([1] * 10 + [4] * 100 + [2] * 100):
        ab.choose(1, replicas, step=step)
    assert len(ab.decisions) == 64
    assert [d["step"] for d in ab.decisions[:3]] == [0, 10, 110]  # the first at 1, 4 and 2 replicas
