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
