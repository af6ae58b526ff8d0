"""Gradient compression and local SGD under `ddp`: options, bytes, training against fp32 DDP, exact resumes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from corral.errors import UserError
from corral.runtime.strategies import Context, get_strategy
from corral.runtime.strategies.compression import Compression, bytes_per_step, check_rank_fits, parse_compression
from tests.conftest import WORKERS, run_corral

SCRIPT = WORKERS / "compress_trainer.py"


def ctx(world: int = 2) -> Context:
    return Context(0, world, 0, torch.device("cpu"), "fp32", 1, 0)


# -- options and bytes (no processes) ----------------------------------------------------------


@pytest.mark.parametrize(
    "spec,message",
    [
        ("zip", "unknown compression 'zip'; choose one of: none, fp16, bf16, powersgd:<rank>"),
        ("powersgd", "needs an integer rank >= 1"),
        ("powersgd:x", "needs an integer rank >= 1"),
        ("powersgd:0", "PowerSGD rank must be >= 1, got 0"),
        ("powersgd:-2", "PowerSGD rank must be >= 1, got -2"),
        ("fp16:2", "compression 'fp16' takes no argument"),
    ],
)
def test_bad_compression_is_one_user_error(spec: str, message: str) -> None:
    with pytest.raises(UserError) as err:
        get_strategy("ddp", ctx(), compression=spec)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "options,message",
    [
        ({"local_sgd": 0}, "local_sgd must be an integer >= 1"),
        ({"local_sgd": 2, "local_sgd_warmup": -1}, "local_sgd_warmup must be an integer >= 0"),
        ({"local_sgd": 2, "compression": "fp16"}, "compression and local_sgd cannot be combined"),
        ({"compresion": "fp16"}, "unknown option(s) for strategy 'ddp': compresion"),
    ],
)
def test_bad_local_sgd_options_are_one_user_error(options: dict, message: str) -> None:
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        get_strategy("ddp", ctx(), **options)


def test_compression_is_refused_where_unsupported() -> None:
    with pytest.raises(UserError, match=r"unknown option\(s\) for strategy 'pipeline': compression"):
        get_strategy("pipeline", ctx(2), stages=2, compression="fp16")


def test_powersgd_rank_above_every_matrix_is_refused() -> None:
    model = nn.Sequential(nn.Linear(8, 4), nn.Linear(4, 2))
    check_rank_fits(parse_compression("powersgd:4"), model)
    with pytest.raises(UserError, match=r"rank 5 is above the largest gradient matrix's smaller dimension \(4\)"):
        check_rank_fits(parse_compression("powersgd:5"), model)


def test_bytes_per_step_by_hand() -> None:
    model = nn.Sequential(nn.Linear(100, 50), nn.Linear(50, 2))  # 50x100 + 50, 2x50 + 2
    assert bytes_per_step(Compression("none"), model) == (5000 + 50 + 100 + 2) * 4
    assert bytes_per_step(Compression("fp16"), model) == (5000 + 50 + 100 + 2) * 2
    # rank 2: the 50x100 weight goes as P (50x2) + Q (100x2) = 300 floats; the 2x50 one is not worth
    # compressing ((2 + 50) x 2 = 104 > 100 / 2) and goes whole; biases go whole.
    assert bytes_per_step(Compression("powersgd", 2), model) == (300 + 100 + 50 + 2) * 4


# -- on real processes ---------------------------------------------------------------------------


def train(out: Path, *args: str, nproc: int = 2) -> list[dict]:
    done = run_corral("run", "--nproc", str(nproc), str(SCRIPT), "--out", str(out), *args)
    assert done.returncode == 0, done.stdout + done.stderr
    return [json.loads((out / f"rank-{r}.json").read_text()) for r in range(nproc)]


def flat(rank: dict) -> torch.Tensor:
    return torch.tensor([v for p in rank["params"] for v in p])


@pytest.fixture(scope="module")
def fp32(tmp_path_factory) -> list[dict]:
    return train(tmp_path_factory.mktemp("fp32") / "run", "--steps", "40")


@pytest.mark.slow
@pytest.mark.parametrize("spec,tol", [("fp16", 2e-3), ("bf16", 2e-2), ("powersgd:2", 5e-2)])
def test_compressed_training_tracks_fp32(fp32, tmp_path: Path, spec: str, tol: float) -> None:
    got = train(tmp_path / "run", "--steps", "40", "--compression", spec)
    assert torch.allclose(flat(got[0]), flat(got[1]))  # the replicas stay identical
    assert abs(got[0]["losses"][-1] - fp32[0]["losses"][-1]) < tol, (got[0]["losses"][-5:], fp32[0]["losses"][-5:])
    ratio = fp32[0]["bytes"] / got[0]["bytes"]
    assert ratio == pytest.approx(2.0) if spec in ("fp16", "bf16") else ratio > 5, ratio


@pytest.mark.slow
def test_local_sgd_every_step_without_momentum_equals_ddp(tmp_path: Path) -> None:
    ddp = train(tmp_path / "ddp", "--steps", "15", "--momentum", "0")
    local = train(tmp_path / "local", "--steps", "15", "--momentum", "0", "--local-sgd", "1")
    torch.testing.assert_close(flat(local[0]), flat(ddp[0]), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(flat(local[1]), flat(ddp[0]), atol=1e-6, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize(
    "args",
    [["--compression", "powersgd:2"], ["--local-sgd", "4", "--warmup", "3"]],
    ids=["powersgd", "local-sgd"],
)
def test_resume_continues_exactly_as_uninterrupted(tmp_path: Path, args: list[str]) -> None:
    whole = train(tmp_path / "whole", "--steps", "22", *args)
    part = tmp_path / "part"
    train(part, "--steps", "10", "--checkpoint", *args)  # step 10: mid-period, replicas differ under local SGD
    resumed = train(part, "--steps", "22", "--checkpoint", *args)
    for r in range(2):
        assert resumed[r]["steps"] == 22
        torch.testing.assert_close(flat(resumed[r]), flat(whole[r]), atol=1e-6, rtol=1e-5)
    if "--local-sgd" in args:
        assert not torch.allclose(flat(whole[0]), flat(whole[1]))  # 22 is not an average step: replicas differ


@pytest.mark.slow
def test_noise_scale_from_two_replicas_agrees_with_one_replica(tmp_path: Path) -> None:
    """Two replicas (local vs averaged gradient) and one (successive steps) estimate the same noise scale."""
    # One replica samples one pair of steps in 16: enough steps for a few dozen pairs, both at the same point.
    one = train(tmp_path / "one", "--steps", "400", nproc=1)[0]["gns"]
    two = train(tmp_path / "two", "--steps", "400")[0]["gns"]
    assert two["grad_sqr"] > 0 and two["grad_var"] > 0 and one["grad_sqr"] > 0
    assert 0.25 < two["noise_scale"] / one["noise_scale"] < 4, (one, two)
    # PowerSGD's average is low-rank and local SGD averages no gradients: no estimate there.
    assert train(tmp_path / "psgd", "--steps", "5", "--compression", "powersgd:2")[0]["gns"] == {}
