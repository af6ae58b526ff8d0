"""Shared fixtures: run `corral run` as a user would, in a subprocess, with one thread per worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WORKERS = ROOT / "tests" / "runtime" / "workers"


def corral_cmd(*args: str) -> list[str]:
    """The command line of `corral ARGS...` with this interpreter."""
    return [sys.executable, "-m", "corral.cli", *args]


def run_corral(*args: str, timeout: float = 180, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `corral ARGS...` to the end and capture its output."""
    full_env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run(corral_cmd(*args), capture_output=True, text=True, timeout=timeout, env=full_env, cwd=ROOT)


def read_traces(out: Path) -> dict[tuple[int, int], dict]:
    """(rank, attempt) -> the record the trainer wrote."""
    traces = {}
    for f in out.glob("trace-*.json"):
        _, rank, attempt = f.stem.split("-")
        traces[int(rank), int(attempt)] = json.loads(f.read_text())
    return traces


@pytest.fixture
def trainer() -> Path:
    """Path of the deterministic test training script."""
    return WORKERS / "trainer.py"
