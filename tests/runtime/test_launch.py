"""`corral run`: torchrun's environment, failure handling, restarts, signals, logs, bad input."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

import psutil
import pytest

from tests.conftest import ROOT, WORKERS, corral_cmd, run_corral


def test_torchrun_style_script_runs_unchanged(tmp_path) -> None:
    proc = run_corral("run", "--nproc", "3", "--log-dir", str(tmp_path), str(WORKERS / "torchrun_style.py"))
    assert proc.returncode == 0, proc.stderr
    for r in range(3):
        assert f"[rank {r}] sum=6 rank={r} local={r} restart=0/0" in proc.stdout
        # --log-dir: the same lines, unprefixed, one file per rank.
        assert f"sum=6 rank={r}" in (tmp_path / f"rank-{r}.log").read_text()


def test_one_rank_exits_3_stops_everyone_within_5s_and_exit_code_is_3() -> None:
    start = time.monotonic()
    proc = run_corral("run", "--nproc", "3", str(WORKERS / "fail_rank.py"), timeout=60)
    elapsed = time.monotonic() - start
    assert proc.returncode == 3, proc.stderr
    assert "rank 1 failed (exit code 3)" in proc.stderr
    assert elapsed < 5 + 3  # 5 s to stop every rank, plus interpreter start-up of the launcher
    assert not [p for p in psutil.process_iter(["cmdline"]) if "fail_rank.py" in " ".join(p.info["cmdline"] or [])]


def test_failed_gang_restarts_while_restarts_remain(tmp_path) -> None:
    proc = run_corral("run", "--nproc", "2", "--max-restarts", "2", str(WORKERS / "fail_once.py"))
    assert proc.returncode == 0, proc.stderr
    assert "[rank 0] attempt 1 rank 0" in proc.stdout
    assert "restarting the gang (1/2)" in proc.stderr
    no_restart = run_corral("run", "--nproc", "2", str(WORKERS / "fail_once.py"))
    assert no_restart.returncode == 7


def test_sigterm_to_launcher_reaches_every_worker_which_saves_and_exits_preempted(tmp_path, trainer) -> None:
    out = tmp_path / "run"
    proc = subprocess.Popen(
        corral_cmd(
            "run",
            "--nproc",
            "2",
            "--grace-period",
            "10",
            str(trainer),
            "--out",
            str(out),
            "--checkpoint-dir",
            str(out / "ckpt"),
            "--epochs",
            "50",
            "--sleep",
            "0.05",
        ),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    deadline = time.monotonic() + 60
    while not (out / "samples-1-0.jsonl").exists() or not (out / "samples-1-0.jsonl").read_text():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 75, err
    assert "preempted: checkpoint saved, exit code 75" in err
    assert (out / "ckpt" / "checkpoint.pt").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--nproc", "0", "x.py"], "--nproc must be >= 1, got 0"),
        (["--nproc", "2", "missing.py"], "script not found: missing.py"),
        (["--max-restarts", "-1", "tests/runtime/workers/fail_once.py"], "--max-restarts must be >= 0"),
        (["--master-port", "70000", "tests/runtime/workers/fail_once.py"], "--master-port must be in 1..65535"),
        (["--nproc", "many", "x.py"], "Invalid value for '--nproc'"),
    ],
)
def test_bad_input_one_line_exit_2(args, message) -> None:
    proc = run_corral("run", *args)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]  # one line
    assert message in proc.stderr
    assert proc.stdout == ""  # nothing started


def test_port_in_use_is_one_line_exit_2() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = run_corral("run", "--master-port", str(port), str(WORKERS / "torchrun_style.py"))
    assert proc.returncode == 2
    assert f"port {port} is already in use" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert proc.stdout == ""


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--strategy", "allreduce", "unknown strategy 'allreduce'; choose one of: ddp"),
        ("--precision", "fp8", "unknown precision 'fp8'; choose one of: fp32, bf16, fp16"),
        ("--precision", "fp16", "precision 'fp16' needs a CUDA device"),
        ("--partition", "zigzag", "unknown partition 'zigzag'"),
    ],
)
def test_bad_job_options_one_line_exit_2(tmp_path, trainer, flag, value, message) -> None:
    proc = run_corral("run", str(trainer), "--out", str(tmp_path), flag, value)
    assert proc.returncode == 2, proc.stderr
    worker_lines = [line for line in proc.stdout.splitlines() + proc.stderr.splitlines() if line.startswith("[rank")]
    assert worker_lines == [f"[rank 0] error: {message}" + worker_lines[0].split(message, 1)[1]]
    assert not list(tmp_path.glob("samples-*"))  # nothing trained


def test_workers_start_before_the_launcher_serves_the_store_and_still_rendezvous(tmp_path) -> None:
    """The launcher's torch import (for the store) does not delay the job's first line: here the store is
    served only once a worker has printed, and the workers, which connected early, still form their group."""
    import io
    import threading

    from corral.runtime import launch as launch_mod

    worker = tmp_path / "early.py"
    worker.write_text(
        "print('up', flush=True)\n"
        "import torch, torch.distributed as dist\n"
        "dist.init_process_group('gloo')\n"
        "t = torch.ones(1)\n"
        "dist.all_reduce(t)\n"
        "print(f'sum={t.item():g}', flush=True)\n"
        "dist.destroy_process_group()\n"  # without it gloo may abort at exit, launcher or not
    )
    first_line = threading.Event()
    real_serve = launch_mod._Store.serve

    def serve(store: launch_mod._Store) -> None:
        assert first_line.wait(60), "no worker printed before the store was served"
        real_serve(store)

    class Out(io.BytesIO):
        def write(self, data: bytes) -> int:  # type: ignore[override]
            if b"] up" in data:
                first_line.set()
            return super().write(data)

    out = Out()
    with pytest.MonkeyPatch.context() as m:
        m.setattr(launch_mod._Store, "serve", serve)
        cfg = launch_mod.LaunchConfig(script=str(worker), nproc=2, extra_env={"OMP_NUM_THREADS": "1"})
        result = launch_mod.launch(cfg, out=out, err=io.BytesIO())
    assert (result.state, result.exit_code) == ("succeeded", 0)
    text = out.getvalue().decode()
    assert "[rank 0] sum=2" in text and "[rank 1] sum=2" in text
