"""`corral run` speaks torchrun's command line: its spellings with its meaning, and one error for the rest.

Also the service's side: a job's entrypoint `python -m pkg.mod ...` or `python -u x.py ...` becomes the
right `corral run` arguments (they were accepted at submit and then failed every run).
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from corral.control.server import free_port
from corral.errors import UserError
from corral.runtime.commands import run_main
from corral.runtime.launch import entrypoint_args
from tests.conftest import ROOT, WORKERS, corral_cmd, read_traces, run_corral

SCRIPT = str(WORKERS / "torchrun_style.py")


# -- bad input: one `error:` line, exit 2, nothing started --------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--nnodes", "0", SCRIPT], "--nnodes must be >= 1, got 0"),
        (["--nnodes", "x", SCRIPT], "--nnodes must be an integer"),
        (["--nnodes", "1:4", SCRIPT], "elastic node ranges (MIN:MAX) are not supported"),
        (["--nnodes", "2", "--node-rank", "2", SCRIPT], "--node-rank must be in 0..1 (--nnodes 2), got 2"),
        (["--node_rank", "-1", SCRIPT], "--node-rank must be in 0..0"),
        (["--nnodes", "2", "--standalone", SCRIPT], "--standalone is one node"),
        (["--nnodes", "2", "--node-rank", "1", SCRIPT], "--nnodes > 1 needs --master-port"),
        (["--nnodes", "2", "--master-port", "29500", "--servers", "1", SCRIPT], "--servers runs on one node"),
        (["--nproc-per-node", "0", SCRIPT], "--nproc must be >= 1, got 0"),
        (["--nproc_per_node", "-3", SCRIPT], "--nproc must be >= 1, got -3"),
        (["--max_restarts", "-1", SCRIPT], "--max-restarts must be >= 0, got -1"),
        (["--master_port", "70000", SCRIPT], "--master-port must be in 1..65535, got 70000"),
        (["--rdzv-endpoint", "127.0.0.1:http", SCRIPT], "--rdzv-endpoint port must be an integer"),
        (["--master-addr", "no-such-host.invalid", SCRIPT], "--master-addr 'no-such-host.invalid' does not resolve"),
        (["--tee", "3", SCRIPT], "torchrun option --tee is not supported by corral run"),
        (["--rdzv-backend", "c10d", SCRIPT], "torchrun option --rdzv-backend is not supported by corral run"),
        (["--rdzv_backend=etcd", SCRIPT], "torchrun option --rdzv_backend is not supported by corral run"),
        (["--monitor-interval", "1", SCRIPT], "torchrun option --monitor-interval is not supported"),
        (["-m", "--no-python", "pkg.mod"], "-m/--module and --no-python exclude each other"),
        (["--no-python", "no-such-program-here"], "script not found or not executable: no-such-program-here"),
        (["missing_script.py"], "script not found: missing_script.py"),
    ],
)
def test_bad_torchrun_options_give_one_error_line_and_start_nothing(capsys, argv: list[str], message: str) -> None:
    assert run_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_busy_master_port_is_refused_by_name(capsys) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert run_main(["--master-port", str(port), SCRIPT]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        f"error: port {port} is already in use (or cannot be bound); pick another --master-port "
        "or leave it out for a free one"
    )


# -- the job entrypoint as the service runs it ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("entrypoint", "args"),
    [
        ("python train.py --lr 0.1", ["train.py", "--lr", "0.1"]),
        ("python -u train.py", ["train.py"]),
        ("python3 -u -X dev -W ignore train.py -v", ["train.py", "-v"]),
        ("python -m pkg.mod --epochs 2", ["-m", "pkg.mod", "--epochs", "2"]),
        ("/usr/bin/python3.11 -O -m pkg.mod", ["-m", "pkg.mod"]),
        ("python -c 'print(1)'", ["--no-python", "python", "-c", "print(1)"]),
        ("./run.sh --fast", ["./run.sh", "--fast"]),
    ],
)
def test_entrypoint_becomes_corral_run_arguments(entrypoint: str, args: list[str]) -> None:
    import shlex

    assert entrypoint_args(shlex.split(entrypoint)) == args


@pytest.mark.parametrize("entrypoint", ["python", "python -u", "python -m"])
def test_entrypoint_without_a_script_is_refused(entrypoint: str) -> None:
    with pytest.raises(UserError):
        entrypoint_args(entrypoint.split())


# -- real runs ---------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_torchrun_spellings_run_the_same_gang() -> None:
    port = free_port()
    proc = run_corral(
        "run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(port),
        "--rdzv_id", "run-42", "--max_restarts", "0", "--nnodes", "1", "--node_rank", "0", SCRIPT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert f"rendezvous 127.0.0.1:{port}" in proc.stderr
    assert "[rank 0] sum=3 rank=0 local=0" in proc.stdout and "[rank 1] sum=3 rank=1 local=1" in proc.stdout


@pytest.mark.slow
def test_module_standalone_and_no_python_run(tmp_path) -> None:
    mod = run_corral("run", "--standalone", "--nproc-per-node", "2", "-m", "tests.runtime.workers.torchrun_style")
    assert mod.returncode == 0, mod.stderr
    assert "[rank 1] sum=3 rank=1" in mod.stdout
    exe = tmp_path / "hello.sh"
    exe.write_text('#!/bin/sh\necho "hello from rank $RANK of $WORLD_SIZE"\n')
    exe.chmod(0o755)
    sh = run_corral("run", "--no-python", "--nproc", "2", str(exe))
    assert sh.returncode == 0, sh.stderr
    assert "[rank 0] hello from rank 0 of 2" in sh.stdout and "[rank 1] hello from rank 1 of 2" in sh.stdout
    # A .py file with --no-python runs as an executable too (its shebang), not through corral's python.
    py = tmp_path / "tool.py"
    py.write_text(f"#!{sys.executable}\nimport os\nprint('tool', os.environ['RANK'])\n")
    py.chmod(0o755)
    tool = run_corral("run", "--no-python", str(py))
    assert tool.returncode == 0 and "[rank 0] tool 0" in tool.stdout, tool.stderr


# -- static multi-node: two launchers on one host form one gang ------------------------------------------------

# 128 samples, 2 ranks x batch 8 -> 8 steps per epoch; 2 epochs = 16 steps, a checkpoint every 4.
TRAIN = ["--n", "128", "--batch-size", "8", "--epochs", "2", "--checkpoint-every", "4"]


def _two_nodes(tmp_path, *worker_args: str, extra: tuple[str, ...] = ()) -> list:
    """Start node 0 and node 1 (`corral run --nnodes 2`, one rank each) on loopback; wait for both."""
    port = free_port()
    procs = [
        subprocess.Popen(
            corral_cmd(
                "run",
                "--nnodes",
                "2",
                "--node-rank",
                str(node),
                "--master-addr",
                "127.0.0.1",
                "--master-port",
                str(port),
                "--nproc-per-node",
                "1",
                *extra,
                str(WORKERS / "trainer.py"),
                *worker_args,
            ),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ, OMP_NUM_THREADS="1"),
        )
        for node in (0, 1)
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        results.append((p.returncode, out, err))
    return results


def _params(trace: dict) -> np.ndarray:
    return np.concatenate([np.asarray(p) for p in trace["params"]])


@pytest.mark.slow
def test_two_nodes_form_one_gang_that_trains_like_one_node(tmp_path) -> None:

    from tests.conftest import read_traces

    multi, single = tmp_path / "multi", tmp_path / "single"
    results = _two_nodes(tmp_path, "--out", str(multi), "--checkpoint-dir", str(multi / "ckpt"), *TRAIN)
    for code, _, err in results:
        assert code == 0, err
    assert "on node 0/2 (2 in the gang)" in results[0][2] and "on node 1/2 (2 in the gang)" in results[1][2]
    ref = run_corral(
        "run", "--nproc", "2", str(WORKERS / "trainer.py"), "--out", str(single), "--checkpoint-dir",
        str(single / "ckpt"), *TRAIN,
    )  # fmt: skip
    assert ref.returncode == 0, ref.stderr
    traces, ref_traces = read_traces(multi), read_traces(single)
    assert traces[0, 0]["world_size"] == 2 and traces[1, 0]["rank"] == 1
    assert traces[0, 0]["steps"] == 16 == ref_traces[0, 0]["steps"]
    np.testing.assert_allclose(_params(traces[0, 0]), _params(ref_traces[0, 0]), atol=1e-12)
    np.testing.assert_allclose(_params(traces[1, 0]), _params(ref_traces[1, 0]), atol=1e-12)


@pytest.mark.slow
def test_sigkilled_rank_on_node_1_restarts_both_nodes_and_the_job_completes(tmp_path) -> None:

    out = tmp_path / "killed"
    results = _two_nodes(
        tmp_path, "--out", str(out), "--checkpoint-dir", str(out / "ckpt"), "--kill-rank", "1", "--kill-step", "10",
        *TRAIN, extra=("--max-restarts", "1"),
    )  # fmt: skip
    (code0, _, err0), (code1, _, err1) = results
    assert code0 == 0 and code1 == 0, err0 + err1
    assert "rank 1 failed (killed by SIGKILL)" in err1
    assert "root cause (first failed worker):" in err1 and "exitcode   : 137 (killed by SIGKILL" in err1
    assert "rank 1 on node 1 failed (killed by SIGKILL); stopping the workers" in err0
    assert "restarting the gang (1/1)" in err0 and "restarting the gang (1/1)" in err1
    traces = read_traces(out)
    # Both nodes' workers ran a second attempt, which resumed from the last checkpoint and finished.
    for rank in (0, 1):
        assert traces[rank, 1]["attempt"] == 1
        assert traces[rank, 1]["resumed_from"] == 8
        assert traces[rank, 1]["steps"] == 16


def test_failed_worker_gets_a_root_cause_summary_with_its_recorded_error() -> None:
    proc = run_corral("run", "--nproc", "2", str(WORKERS / "raises_recorded.py"), timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert "root cause (first failed worker):" in proc.stderr
    assert "rank       : 1 (local_rank: 1, node: 0)" in proc.stderr
    assert "exitcode   : 1 (exit code 1" in proc.stderr
    assert "error      : ValueError: bad batch shape on rank 1" in proc.stderr or (
        "bad batch shape on rank 1" in proc.stderr.split("error_file :")[1]
    )
    assert "host       : " in proc.stderr and "time       : " in proc.stderr


def test_busy_master_port_on_node_0_of_a_multi_node_run_is_refused(capsys) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        argv = ["--nnodes", "2", "--node-rank", "0", "--master-addr", "127.0.0.1", "--master-port", str(port), SCRIPT]
        assert run_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --master-port {port} is already in use (or cannot be bound) on this node (node 0)"]
