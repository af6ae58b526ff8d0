"""Parameter server through `corral run --servers S`: bsp equals data parallel, ssp bounds staleness,
asp does not wait for a straggler, checkpoints hold every shard, failures restart the gang."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import ROOT, WORKERS, corral_cmd, read_traces, run_corral

pytestmark = pytest.mark.slow

TRAINER = WORKERS / "ps_trainer.py"
TRUE_W = np.arange(1.0, 9.0)


def _run(
    out: Path, nproc: int, servers: int, *args: str, env: dict[str, str] | None = None, launcher: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    cmd = [
        "run",
        "--nproc",
        str(nproc),
        *(["--servers", str(servers)] if servers else []),
        *launcher,
        str(TRAINER),
        "--out",
        str(out),
        *args,
    ]
    proc = run_corral(*cmd, env=env, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def _params(trace: dict) -> np.ndarray:
    return np.concatenate([np.asarray(p) for p in trace["params"]])


def _samples(out: Path, rank: int, attempt: int = 0) -> list[tuple[int, list[int]]]:
    lines = (out / f"samples-{rank}-{attempt}.jsonl").read_text().splitlines()
    return [tuple(json.loads(line)) for line in lines]


def _server_reports(trace_dir: Path) -> list[dict]:
    return [json.loads(f.read_text()) for f in sorted(trace_dir.glob("server-*.json"))]


def test_bsp_equals_one_worker_with_batch_nb_and_ddp(tmp_path) -> None:
    """SGD with momentum, float64 MLP: 2 workers x B on 2 servers == 1 worker x 2B == DDP 2 x B."""
    common = ("--max-steps", "20", "--epochs", "5", "--model", "mlp")
    _run(tmp_path / "ps", 2, 2, "--batch-size", "8", *common)
    _run(tmp_path / "one", 1, 1, "--batch-size", "16", *common)
    _run(tmp_path / "ddp", 2, 0, "--batch-size", "8", "--strategy", "ddp", *common)
    ps, one, ddp = (read_traces(tmp_path / name) for name in ("ps", "one", "ddp"))
    assert ps[0, 0]["steps"] == one[0, 0]["steps"] == ddp[0, 0]["steps"] == 20
    np.testing.assert_allclose(_params(ps[1, 0]), _params(ps[0, 0]), atol=0)  # replicas identical
    np.testing.assert_allclose(_params(ps[0, 0]), _params(one[0, 0]), atol=1e-6, rtol=1e-5)
    np.testing.assert_allclose(_params(ps[0, 0]), _params(ddp[0, 0]), atol=1e-6, rtol=1e-5)
    assert np.abs(_params(one[0, 0]) - _params(_initial())).max() > 0.1  # training moved the model


def _initial() -> dict:
    import importlib.util

    spec = importlib.util.spec_from_file_location("ps_trainer", TRAINER)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return {"params": [p.detach().flatten().tolist() for p in mod.build("mlp").parameters()]}


def test_bsp_with_adam_hash_sharding_accumulation_and_lr_schedule_equals_ddp(tmp_path) -> None:
    """Adam state on the servers, hyperparameters forwarded from an LR scheduler, grad_accum 2, 3 servers."""
    common = (
        "--max-steps",
        "16",
        "--epochs",
        "5",
        "--optimizer",
        "adam",
        "--lr",
        "0.05",
        "--schedule",
        "--grad-accum",
        "2",
        "--batch-size",
        "4",
    )
    _run(tmp_path / "ps", 2, 3, "--sharding", "hash", *common)
    _run(tmp_path / "ddp", 2, 0, "--strategy", "ddp", *common)
    ps, ddp = read_traces(tmp_path / "ps"), read_traces(tmp_path / "ddp")
    np.testing.assert_allclose(_params(ps[0, 0]), _params(ddp[0, 0]), atol=1e-6, rtol=1e-5)


def test_ssp_never_lets_a_worker_get_more_than_s_steps_ahead(tmp_path) -> None:
    """ssp:2 with rank 1 four times slower: the servers record max(clock) - min(clock) at every reply."""
    trace = tmp_path / "servers"
    _run(
        tmp_path / "out",
        3,
        2,
        "--consistency",
        "ssp:2",
        "--model",
        "linear",
        "--n",
        "384",
        "--epochs",
        "2",
        env={"CORRAL_STRAGGLER": "1:4.0", "CORRAL_PS_TRACE": str(trace)},
    )
    reports = _server_reports(trace)
    assert len(reports) == 2
    for r in reports:
        assert r["consistency"] == "ssp:2"
        assert r["max_spread"] <= 2, r["spreads"]
        assert r["max_spread"] == 2  # the bound was reached ...
        assert r["deferred"] > 0  # ... and enforced: fast workers waited for the straggler
        assert r["replies"] == r["updates"] == 3 * 32  # 384 samples / (3 x 8) = 16 steps x 2 epochs each


def test_asp_does_not_wait_for_a_straggler_and_still_converges(tmp_path) -> None:
    """asp, rank 1 four times slower: fast workers take more of each epoch's steps; every sample once per epoch."""
    trace = tmp_path / "servers"
    out = tmp_path / "out"
    _run(
        out,
        3,
        2,
        "--consistency",
        "asp",
        "--model",
        "linear",
        "--n",
        "512",
        "--epochs",
        "4",
        env={"CORRAL_STRAGGLER": "1:4.0", "CORRAL_PS_TRACE": str(trace)},
    )
    traces = read_traces(out)
    steps = {r: traces[r, 0]["my_steps"] for r in range(3)}
    assert steps[0] > 2 * steps[1] and steps[2] > 2 * steps[1], steps
    assert sum(steps.values()) == 4 * 512 // 8  # the epoch's steps, shared out
    assert all(traces[r, 0]["steps"] == 256 for r in range(3))  # the global step
    for epoch in range(4):
        seen = [i for r in range(3) for e, idx in _samples(out, r) if e == epoch for i in idx]
        assert sorted(seen) == list(range(512))
    w = _params(traces[0, 0])
    np.testing.assert_allclose(w[:8], TRUE_W, atol=0.05)  # recovers the true weights
    assert traces[0, 0]["losses"][-1] < 0.05
    assert all(r["max_spread"] > 2 for r in _server_reports(trace))  # nobody was held back


def test_bsp_worker_killed_restarts_from_checkpoint_and_matches_uninterrupted(tmp_path) -> None:
    """SIGKILL of rank 1 at step 23: the gang restarts from step 20 (servers re-initialised from the
    checkpoint, momentum included) and ends bit-identical to an uninterrupted run."""
    common = ("--n", "256", "--batch-size", "8", "--epochs", "2", "--checkpoint-every", "5")
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    proc = _run(
        killed,
        2,
        2,
        "--checkpoint-dir",
        str(killed / "ckpt"),
        "--kill-rank",
        "1",
        "--kill-step",
        "23",
        *common,
        launcher=("--max-restarts", "1", "--grace-period", "1"),
    )
    assert "rank 1 failed (killed by SIGKILL)" in proc.stderr
    _run(clean, 2, 2, "--checkpoint-dir", str(clean / "ckpt"), *common)
    traces, ref = read_traces(killed), read_traces(clean)
    assert traces[0, 1]["resumed_from"] == 20
    assert traces[0, 1]["steps"] == ref[0, 0]["steps"] == 32
    np.testing.assert_allclose(_params(traces[0, 1]), _params(ref[0, 0]), atol=1e-12)


def test_server_killed_fails_the_gang_which_resumes_like_ddp(tmp_path) -> None:
    """A server is part of the gang: its SIGKILL restarts everyone from the checkpoint; the run ends where
    an uninterrupted DDP run ends."""
    common = ("--n", "256", "--batch-size", "8", "--epochs", "2", "--checkpoint-every", "5")
    killed, ddp = tmp_path / "killed", tmp_path / "ddp"
    proc = _run(
        killed,
        2,
        2,
        "--checkpoint-dir",
        str(killed / "ckpt"),
        "--kill-server",
        "1",
        "--kill-step",
        "12",
        *common,
        launcher=("--max-restarts", "1", "--grace-period", "1"),
    )
    assert "server 1 failed (killed by SIGKILL)" in proc.stderr
    assert "restarting the gang (1/1) after server 1 failed" in proc.stderr
    _run(ddp, 2, 0, "--strategy", "ddp", *common)
    traces, ref = read_traces(killed), read_traces(ddp)
    assert traces[0, 1]["resumed_from"] == 10
    np.testing.assert_allclose(_params(traces[0, 1]), _params(ref[0, 0]), atol=1e-6, rtol=1e-5)


def test_asp_worker_killed_restarts_the_gang_from_the_last_checkpoint(tmp_path) -> None:
    """asp: a lost worker also restarts the gang from the last checkpoint (every 8 global steps); the job
    then runs exactly the global steps that were not in the checkpoint."""
    out = tmp_path / "out"
    proc = _run(
        out,
        3,
        2,
        "--consistency",
        "asp",
        "--model",
        "linear",
        "--n",
        "512",
        "--epochs",
        "3",
        "--checkpoint-dir",
        str(out / "ckpt"),
        "--checkpoint-every",
        "8",
        "--kill-rank",
        "2",
        "--kill-step",
        "30",
        launcher=("--max-restarts", "1", "--grace-period", "1"),
    )
    assert "rank 2 failed (killed by SIGKILL)" in proc.stderr
    traces = read_traces(out)
    resumed = traces[0, 1]["resumed_from"]
    assert resumed >= 8 and resumed % 8 == 0
    assert all(traces[r, 1]["steps"] == 3 * 64 for r in range(3))
    assert sum(traces[r, 1]["my_steps"] for r in range(3)) == 3 * 64 - resumed
    np.testing.assert_allclose(_params(traces[0, 1])[:8], TRUE_W, atol=0.05)


def test_asp_preempted_saves_every_shard_and_resumes_the_rest_of_the_epoch(tmp_path) -> None:
    """SIGTERM to the launcher: workers end the round together, rank 0 saves every server's shard and
    optimizer state, all exit 75; a new run resumes and sees exactly the rest of the epoch."""
    ckpt = tmp_path / "ckpt"
    first, second = tmp_path / "first", tmp_path / "second"
    args = [
        "--consistency",
        "asp",
        "--model",
        "linear",
        "--n",
        "480",
        "--epochs",
        "1",
        "--sleep",
        "0.02",
        "--checkpoint-dir",
        str(ckpt),
    ]
    proc = subprocess.Popen(
        corral_cmd(
            "run", "--nproc", "2", "--servers", "2", "--grace-period", "10", str(TRAINER), "--out", str(first), *args
        ),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    deadline = time.monotonic() + 60
    while sum(len(_samples(first, r)) for r in (0, 1) if (first / f"samples-{r}-0.jsonl").exists()) < 10:
        assert time.monotonic() < deadline, "workers never started"
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 75, out + err
    assert "preempted: checkpoint saved, exit code 75" in err
    payload = torch.load(ckpt / "checkpoint.pt", weights_only=False)
    saved_step = payload["step"]
    assert 0 < saved_step < 60
    # Every parameter's values and its momentum buffer (from both servers) are in the checkpoint,
    # in torch's own format: a plain local optimizer could load it.
    assert set(payload["model"]) == {"weight", "bias"}
    assert sorted(payload["optimizer"]["state"]) == ["bias", "weight"]  # by parameter name: any strategy loads it
    assert all("momentum_buffer" in s for s in payload["optimizer"]["state"].values())

    _run(second, 3, 2, *args)  # resumed at another worker count, as DDP jobs can
    traces = read_traces(second)
    assert traces[0, 0]["resumed_from"] == saved_step
    assert traces[0, 0]["steps"] == 60
    seen = [
        i
        for d, ranks in ((first, (0, 1)), (second, (0, 1, 2)))
        for r in ranks
        for _, idx in _samples(d, r)
        for i in idx
    ]
    assert sorted(seen) == list(range(480))  # every sample exactly once across the two runs


def test_servers_run_beside_workers_with_prefixed_output(tmp_path) -> None:
    proc = _run(tmp_path / "out", 1, 2, "--max-steps", "2", launcher=("--log-dir", str(tmp_path / "logs")))
    assert "[server 0] serving" in proc.stdout and "[server 1] serving" in proc.stdout
    assert "starting 1 worker(s) and 2 server(s)" in proc.stderr
    assert "serving" in (tmp_path / "logs" / "server-1.log").read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--servers", "0"], "servers must be an integer >= 1, got 0"),
        (["--consistency", "gossip"], "unknown consistency 'gossip'; choose one of: bsp, asp, ssp:<s>"),
        (["--consistency", "ssp"], "consistency 'ssp' needs a staleness bound: write ssp:<s>, e.g. 'ssp:2'"),
        (["--sharding", "modulo"], "unknown sharding 'modulo'; choose one of: range, hash"),
    ],
)
def test_bad_ps_options_one_line_exit_2(tmp_path, args, message) -> None:
    # Without a launcher: the whole output is one line.
    direct = subprocess.run(
        [sys.executable, str(TRAINER), "--out", str(tmp_path), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        timeout=60,
    )
    assert direct.returncode == 2
    assert direct.stderr.strip() == f"error: {message}"
    assert direct.stdout == ""
    # Under the launcher: the worker's one line, exit 2, and nothing trained or served.
    proc = run_corral("run", "--servers", "1", str(TRAINER), "--out", str(tmp_path), *args)
    assert proc.returncode == 2, proc.stderr
    assert [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("[rank")] == [
        f"[rank 0] error: {message}"
    ]
    assert "serving" not in proc.stdout
    assert not list(tmp_path.glob("samples-*"))


def test_corral_run_servers_negative_is_one_line_exit_2() -> None:
    proc = run_corral("run", "--servers", "-1", str(TRAINER))
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: --servers must be >= 0, got -1"
    assert proc.stdout == ""
