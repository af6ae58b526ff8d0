"""The `pipeline` strategy on real processes: each schedule and stage count against one process, DP x PP,
resumes across stage counts and strategies, preemption, and bad input refused before anything starts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from corral.errors import UserError
from corral.runtime import checkpoint as ckpt
from corral.runtime.strategies import Context, get_strategy
from tests.conftest import WORKERS, run_corral

SCRIPT = WORKERS / "pipeline_trainer.py"
STEPS = 10

pytestmark = pytest.mark.slow


def train(out: Path, nproc: int, *args: str, expect: int = 0) -> dict:
    done = run_corral("run", "--nproc", str(nproc), str(SCRIPT), "--out", str(out), *args)
    assert done.returncode == expect, done.stdout + done.stderr
    return json.loads((out / "result.json").read_text()) if expect == 0 else {}


def params(out: Path) -> dict[str, torch.Tensor]:
    return ckpt.load(ckpt.checkpoint_path(out))["model"]


def assert_same(a: Path, b: Path) -> None:
    pa, pb = params(a), params(b)
    assert pa.keys() == pb.keys()
    for k in pa:
        torch.testing.assert_close(pa[k], pb[k], atol=1e-6, rtol=1e-5, msg=k)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, Path]:
    """One process, the same global batch: batch 8 (for pp only) and batch 16 (for dp 2 x pp 2)."""
    base = tmp_path_factory.mktemp("reference")
    refs = {}
    for name, args in {
        "b8": ["--batch-size", "8"],
        "b16": ["--batch-size", "16"],
        "b8-accum-clip": ["--batch-size", "8", "--grad-accum", "2", "--max-grad-norm", "0.05"],
    }.items():
        train(base / name, 1, "--strategy", "ddp", "--steps", str(STEPS), *args)
        refs[name] = base / name
    return refs


@pytest.mark.parametrize(
    "stages,schedule",
    [(2, "gpipe"), (2, "1f1b"), (2, "interleaved"), (4, "gpipe"), (4, "1f1b"), (4, "interleaved")],
)
def test_pipeline_equals_one_process(reference, tmp_path: Path, stages: int, schedule: str) -> None:
    out = tmp_path / "pp"
    got = train(out, stages, "--stages", str(stages), "--schedule", schedule, "--microbatches", str(stages))
    assert_same(out, reference["b8"])
    ref = json.loads((reference["b8"] / "result.json").read_text())
    # The loss comes from the last stage, on every rank; predict runs every stage.
    assert got["losses"] == pytest.approx(ref["losses"], abs=1e-5)
    assert got["logged"] == pytest.approx(ref["logged"], abs=1e-5)
    torch.testing.assert_close(torch.tensor(got["predict"]), torch.tensor(ref["predict"]), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("schedule", ["1f1b", "gpipe"])
def test_dp2_x_pp2_equals_one_process(reference, tmp_path: Path, schedule: str) -> None:
    out = tmp_path / "dpxpp"
    train(out, 4, "--stages", "2", "--schedule", schedule, "--batch-size", "8", "--microbatches", "4")
    assert_same(out, reference["b16"])


def test_accumulation_and_global_norm_clipping_equal_one_process(reference, tmp_path: Path) -> None:
    out = tmp_path / "pp"
    train(out, 2, "--stages", "2", "--grad-accum", "2", "--max-grad-norm", "0.05", "--balance", "3,5")
    assert_same(out, reference["b8-accum-clip"])


@pytest.mark.parametrize(
    "first,then",
    [
        ((2, ["--stages", "2"]), (4, ["--stages", "4"])),  # another stage count
        ((2, ["--stages", "2"]), (1, ["--strategy", "ddp"])),  # pipeline -> ddp
        ((2, ["--strategy", "ddp", "--batch-size", "4"]), (2, ["--stages", "2", "--schedule", "gpipe"])),  # ddp -> pp
    ],
    ids=["pp2-to-pp4", "pp2-to-ddp", "ddp-to-pp2"],
)
def test_resume_elsewhere_continues_as_uninterrupted(reference, tmp_path: Path, first, then) -> None:
    out = tmp_path / "run"
    train(out, first[0], *first[1], "--steps", "5")
    assert ckpt.load(ckpt.checkpoint_path(out))["step"] == 5
    got = train(out, then[0], *then[1], "--steps", str(STEPS))
    assert got["steps"] == STEPS
    assert_same(out, reference["b8"])


def test_sigterm_preempts_every_stage_and_resumes_exactly(tmp_path: Path) -> None:
    ref, out = tmp_path / "ref", tmp_path / "run"
    steps = ["--steps", "30", "--sleep", "0.05"]
    train(ref, 1, "--strategy", "ddp", *steps)
    train(out, 2, "--stages", "2", "--sigterm-at", "3", *steps, expect=75)
    saved = ckpt.load(ckpt.checkpoint_path(out))["step"]
    assert 3 <= saved < 30  # both stages stopped at the same step and saved it
    got = train(out, 2, "--stages", "2", *steps)
    assert got["steps"] == 30
    assert_same(out, ref)


def test_bf16_pipeline_tracks_bf16_one_process(tmp_path: Path) -> None:
    ref, out = tmp_path / "ref", tmp_path / "pp"
    a = train(ref, 1, "--strategy", "ddp", "--precision", "bf16")
    b = train(out, 2, "--stages", "2", "--precision", "bf16")
    assert b["losses"] == pytest.approx(a["losses"], abs=2e-2)


# -- bad input: one line, nothing started ------------------------------------------------


def ctx(world: int, precision: str = "fp32") -> Context:
    return Context(0, world, 0, torch.device("cpu"), precision, 1, 0)


@pytest.mark.parametrize(
    "world,options,message",
    [
        (4, {"stages": 3}, "stages=3 does not divide WORLD_SIZE=4: dp x pp must equal WORLD_SIZE (dp x 3 != 4)"),
        (4, {}, "needs stages=P"),
        (4, {"stages": 0}, "stages must be an integer >= 1"),
        (4, {"stages": 4, "microbatches": 2}, "microbatches must be an integer >= stages (4), got 2"),
        (4, {"stages": 2, "schedule": "zb"}, "unknown schedule 'zb'; choose one of: 1f1b, gpipe, interleaved"),
        (4, {"stages": 2, "balance": "even"}, "balance must be 'auto' or a list of layer counts"),
        (4, {"stages": 2, "schedule": "interleaved", "microbatches": 3}, "a multiple of stages (2)"),
        (2, {"stages": 2, "chunks": 4}, "unknown option(s) for strategy 'pipeline': chunks"),
    ],
)
def test_bad_pipeline_options_are_one_user_error(world: int, options: dict, message: str) -> None:
    with pytest.raises(UserError) as err:
        get_strategy("pipeline", ctx(world), **options)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_unknown_option_to_any_strategy_is_a_user_error() -> None:
    with pytest.raises(UserError, match=r"unknown option\(s\) for strategy 'ddp': x \(it takes compression, "):
        get_strategy("ddp", ctx(2), x=1)
    with pytest.raises(UserError, match="does not support precision 'fp16'"):
        get_strategy("pipeline", ctx(2, "fp16"), stages=2)


def test_model_with_too_few_layers_is_refused() -> None:
    strategy = get_strategy("pipeline", ctx(4), stages=4)
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(UserError, match="a model of 2 layers cannot be split into 4 stages"):
        strategy.prepare(model, opt, lambda: None)
    with pytest.raises(UserError, match="splits an nn.Sequential"):
        strategy.prepare(torch.nn.Linear(2, 2), opt, lambda: None)


def test_bad_input_under_corral_run_is_one_line_and_exit_2(tmp_path: Path) -> None:
    done = run_corral("run", "--nproc", "3", str(SCRIPT), "--out", str(tmp_path / "x"), "--stages", "2")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "stages=2 does not divide WORLD_SIZE=3" in done.stdout + done.stderr
    assert not (tmp_path / "x" / "result.json").exists()
    # A batch that does not divide into the microbatches: named with both numbers.
    done = run_corral(
        "run", "--nproc", "2", str(SCRIPT), "--out", str(tmp_path / "y"), "--stages", "2", "--microbatches", "3"
    )
    assert (
        done.returncode == 2 and "batch of 8 samples does not divide into microbatches=3" in done.stdout + done.stderr
    )
    shutil.rmtree(tmp_path / "y", ignore_errors=True)
