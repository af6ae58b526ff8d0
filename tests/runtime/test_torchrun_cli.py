"""`corral run` speaks torchrun's command line: its spellings with its meaning, and one error for the rest.

Also the service's side: a job's entrypoint `python -m pkg.mod ...` or `python -u x.py ...` becomes the
right `corral run` arguments (they were accepted at submit and then failed every run).
"""

from __future__ import annotations

import sys

import pytest

from corral.control.server import free_port
from corral.errors import UserError
from corral.runtime.commands import run_main
from corral.runtime.launch import entrypoint_args
from tests.conftest import WORKERS, run_corral

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
        (["--nnodes", "2", "--node-rank", "1", SCRIPT], "multi-node gangs are not supported by corral run yet"),
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
