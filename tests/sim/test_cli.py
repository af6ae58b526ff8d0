"""`corral simulate` as a user runs it: results, reports, and one-line errors with exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from corral.cli import main

TRACE = "id,submit_time,duration,gpus\na,0,100,2\nb,10,50,4\nc,20,30,2\n"


@pytest.fixture
def trace(tmp_path: Path) -> Path:
    path = tmp_path / "trace.csv"
    path.write_text(TRACE)
    return path


def test_json_output_compares_policies(trace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["simulate", "--trace", str(trace), "--policy", "fifo,srtf", "--cluster", "1x4", "--json"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["cluster"] == "1x4" and doc["jobs"] == 3
    assert doc["policies"]["fifo"]["avg_jct"] == pytest.approx((100 + 140 + 160) / 3)
    assert doc["policies"]["srtf"]["finished"] == 3


def test_table_and_report_files(trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    rc = main(
        [
            "simulate",
            "--trace",
            str(trace),
            "--policy",
            "fifo,tiresias",
            "--cluster",
            "2x2",
            "--round",
            "30",
            "--restart-overhead",
            "10",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "avg JCT (s)" in text and "tiresias" in text
    assert {p.name for p in out.iterdir()} == {
        "report.md",
        "metrics.json",
        "jct_cdf.png",
        "utilisation.png",
        "queue.png",
    }
    assert json.loads((out / "metrics.json").read_text())["round_s"] == 30


def test_synthetic_spec_uses_the_seed_option(capsys: pytest.CaptureFixture[str]) -> None:
    def run(seed: str) -> dict:
        args = ["simulate", "--trace", "synthetic:40", "--cluster", "2x4", "--json", "--seed", seed]
        assert main(args) == 0
        doc = json.loads(capsys.readouterr().out)
        return {k: v for k, v in doc["policies"]["fifo"].items() if k != "wall_s"}

    assert run("3") == run("3")
    assert run("3") != run("4")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--policy", "fifo,nope"], "unknown policy 'nope'; choose one of: fairshare, fifo"),
        (["--policy", " , "], "--policy: name at least one policy"),
        (["--cluster", "0x4"], "cluster '0x4': nodes and GPUs per node must be at least 1"),
        (["--cluster", "4x0"], "cluster '4x0': nodes and GPUs per node must be at least 1"),
        (["--cluster", "abc"], "cluster 'abc': expected NODESxGPUS"),
        (["--round", "0"], "--round must be a number > 0"),
        (["--round", "-5"], "--round must be a number > 0"),
        (["--round", "soon"], "--round must be a number > 0"),
        (["--restart-overhead", "-1"], "--restart-overhead must be a number >= 0"),
        (["--seed", "x"], "--seed must be an integer >= 0"),
        (["--placement", "diagonal"], "unknown placer 'diagonal'"),
    ],
)
def test_bad_options_are_one_line_errors(
    trace: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["simulate", "--trace", str(trace), "--cluster", "1x4", *args])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("error: ") and message in err
    assert err.count("\n") == 1


def test_out_must_be_a_directory(trace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--trace", str(trace), "--out", str(trace)]) == 2
    assert "exists and is not a directory" in capsys.readouterr().err


def test_missing_and_malformed_traces(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--trace", str(tmp_path / "absent.csv")]) == 2
    assert "trace file not found" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("id,submit_time,duration,gpus\na,0,10,1\nb,5,10,x\n")
    assert main(["simulate", "--trace", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {bad} line 3, column 'gpus': expected a positive integer, got 'x'\n"


def test_module_import_is_cheap() -> None:
    import subprocess
    import sys

    code = "import sys, corral.sim.cli; print(any(m in sys.modules for m in ('numpy', 'matplotlib', 'scipy')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
