"""A worker SIGKILLed mid-run: the gang restarts from the last checkpoint and ends where an uninterrupted run ends."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import read_traces, run_corral

pytestmark = pytest.mark.slow

# 256 samples, 2 workers x batch 8 -> 16 steps per epoch; 2 epochs = 32 steps.
# A checkpoint every 5 steps; rank 1 kills itself at step 23 (epoch 1), so the
# gang must resume from step 20, four steps into epoch 1.
COMMON = ["--n", "256", "--batch-size", "8", "--epochs", "2", "--checkpoint-every", "5"]


def _params(trace: dict) -> np.ndarray:
    return np.concatenate([np.asarray(p) for p in trace["params"]])


def test_sigkill_restart_resumes_from_checkpoint_and_matches_uninterrupted(tmp_path, trainer) -> None:
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    proc = run_corral(
        "run",
        "--nproc",
        "2",
        "--max-restarts",
        "1",
        str(trainer),
        "--out",
        str(killed),
        "--checkpoint-dir",
        str(killed / "ckpt"),
        "--kill-rank",
        "1",
        "--kill-step",
        "23",
        *COMMON,
    )
    assert proc.returncode == 0, proc.stderr
    assert "rank 1 failed (killed by SIGKILL)" in proc.stderr
    assert "restarting the gang (1/1)" in proc.stderr
    ref = run_corral(
        "run", "--nproc", "2", str(trainer), "--out", str(clean), "--checkpoint-dir", str(clean / "ckpt"), *COMMON
    )
    assert ref.returncode == 0, ref.stderr

    traces, ref_traces = read_traces(killed), read_traces(clean)
    final = traces[0, 1]
    assert final["attempt"] == 1
    assert final["resumed_from"] == 20  # the last checkpoint, not step 0
    assert final["steps"] == 32 == ref_traces[0, 0]["steps"]
    np.testing.assert_allclose(_params(final), _params(ref_traces[0, 0]), atol=1e-12)

    # The interrupted epoch (1): samples trained on before the checkpoint plus
    # those after the restart are the whole epoch, each exactly once.
    seen: list[int] = []
    for rank in (0, 1):
        for attempt, keep in ((0, lambda step: step <= 20), (1, lambda step: True)):
            for line in (killed / f"samples-{rank}-{attempt}.jsonl").read_text().splitlines():
                epoch, step, idx = json.loads(line)
                if epoch == 1 and keep(step):
                    seen.extend(idx)
    assert sorted(seen) == list(range(256))


def test_resume_at_another_world_size_sees_the_rest_of_the_epoch(tmp_path, trainer) -> None:
    """Preempted at 2 workers (SIGTERM -> checkpoint, exit 75), resumed at 3: no sample twice, none skipped."""
    import os
    import signal
    import subprocess
    import time

    from tests.conftest import ROOT, corral_cmd

    out = tmp_path / "elastic"
    ckpt = out / "ckpt"
    args = [
        "--out",
        str(out),
        "--checkpoint-dir",
        str(ckpt),
        "--n",
        "240",
        "--batch-size",
        "4",
        "--epochs",
        "1",
        "--sleep",
        "0.05",
    ]
    proc = subprocess.Popen(
        corral_cmd("run", "--nproc", "2", "--grace-period", "10", str(trainer), *args),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    deadline = time.monotonic() + 60
    while (
        not list(out.glob("samples-*-0.jsonl"))
        or sum(len(f.read_text().splitlines()) for f in out.glob("samples-*-0.jsonl")) < 10
    ):
        assert time.monotonic() < deadline, "workers never started"
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 75, err
    assert "preempted" in err
    first = [json.loads(line) for r in (0, 1) for line in (out / f"samples-{r}-0.jsonl").read_text().splitlines()]
    saved_step = max(step for _, step, _ in first)

    (out / "first").mkdir()
    for f in out.glob("samples-*-0.jsonl"):
        f.rename(out / "first" / f.name)
    resumed = run_corral("run", "--nproc", "3", str(trainer), *args)
    assert resumed.returncode == 0, resumed.stderr
    traces = read_traces(out)
    assert traces[0, 0]["resumed_from"] == saved_step
    seen = [i for _, _, idx in first for i in idx]
    for r in range(3):
        for line in (out / f"samples-{r}-0.jsonl").read_text().splitlines():
            seen.extend(json.loads(line)[2])
    # Every remaining sample exactly once; a rank that would run one batch fewer than its
    # peers repeats a few samples in its last batch (as DistributedSampler does), nothing else.
    assert set(seen) == set(range(240))
    assert len(seen) - 240 <= 3  # at most one repeat per rank with strided partitioning
