"""`corral doctor` on this machine: a table, and exit 0 because it can train on CPU."""

from __future__ import annotations

from corral.runtime.doctor import Check, missing
from tests.conftest import run_corral


def test_doctor_passes_here_and_shows_every_check() -> None:
    proc = run_corral("doctor")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in (
        "python",
        "torch",
        "CUDA",
        "backends",
        "gloo=yes",
        "/dev/shm",
        "CPU count",
        "free port",
        "gloo all-reduce",
        "2 processes on 127.0.0.1: ok",
    ):
        assert name in proc.stdout
    assert "this machine can train on CPU" in proc.stdout


def test_missing_names_what_is_wrong_in_one_line() -> None:
    checks = [
        Check("python", "3.11"),
        Check("gloo all-reduce", "failed: timeout", ok=False, required=True),
        Check("/dev/shm", "missing", ok=False),
    ]
    assert missing(checks) == "gloo all-reduce: failed: timeout"
    assert missing(checks[:1]) is None
