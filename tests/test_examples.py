"""The shipped examples run under `corral run` and reach what their docstrings promise."""

from __future__ import annotations

import re

import pytest

from tests.conftest import run_corral

pytestmark = pytest.mark.slow


def test_digits_reaches_95_percent_in_10_epochs_on_2_workers() -> None:
    proc = run_corral("run", "--nproc", "2", "examples/digits.py", "--epochs", "10")
    assert proc.returncode == 0, proc.stderr
    acc = float(re.search(r"final test accuracy: ([0-9.]+)", proc.stdout).group(1))
    assert acc >= 0.95, proc.stdout


def test_linear_regression_recovers_the_true_weights() -> None:
    proc = run_corral("run", "--nproc", "2", "examples/linear_regression.py")
    assert proc.returncode == 0, proc.stderr
    err = float(re.search(r"max \|w - w_true\| = ([0-9.]+)", proc.stdout).group(1))
    assert err < 0.05, proc.stdout


def test_pipeline_example_trains_over_four_stages() -> None:
    proc = run_corral("run", "--nproc", "4", "examples/pipeline.py", "--stages", "4", timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"pipeline: 4 stages \(auto-balanced\) of layers \[\d+, \d+, \d+, \d+\]", proc.stdout)
    held = [int(n.replace(",", "")) for n in re.findall(r"rank \d \(replica 0\): ([0-9,]+) of", proc.stdout)]
    total = int(re.search(r"of ([0-9,]+) parameters", proc.stdout).group(1).replace(",", ""))
    assert len(held) == 4 and sum(held) == total  # every parameter on exactly one stage
    acc = float(re.search(r"test accuracy ([0-9.]+)", proc.stdout).group(1))
    assert acc >= 0.85, proc.stdout
