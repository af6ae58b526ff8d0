"""SIGKILL `corral server` while jobs run, start it again: every job ends right, none lost, none run twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from corral.control.server import free_port, wait_until_serving
from tests.conftest import ROOT, WORKERS, corral_cmd

pytestmark = pytest.mark.slow
API = "/api/v1"


def start_server(
    home: Path, port: int, *options: str, devices: int | None = 3, round_s: float = 0.5
) -> subprocess.Popen[bytes]:
    """`corral server` on `home` and `port` (more `options` after the usual ones), once it answers."""
    env = dict(os.environ, OMP_NUM_THREADS="1", CORRAL_HOME=str(home))
    log = open(home / f"server-{time.time_ns()}.log", "wb")
    proc = subprocess.Popen(
        corral_cmd(
            "server",
            "--home",
            str(home),
            "--port",
            str(port),
            *(("--devices", str(devices)) if devices is not None else ()),
            "--round",
            str(round_s),
            "--grace",
            "15",
            *options,
        ),  # fmt: skip
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    assert wait_until_serving(f"http://127.0.0.1:{port}", proc), "corral server did not start"
    return proc


def test_server_sigkill_and_restart(tmp_path: Path, db_url: str) -> None:
    """On SQLite and on PostgreSQL (`db_url`): the restarted server finds the same database."""
    home = tmp_path / "home"
    home.mkdir()
    port = free_port()
    server = start_server(home, port, "--db", db_url)
    token = (home / "admin-token").read_text().strip()
    c = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    py = sys.executable

    def submit(name: str, cmd: str, gpus: int = 1) -> int:
        body = {
            "name": name,
            "entrypoint": cmd,
            "workdir": str(ROOT),
            "resources": {"gpus": gpus},
            "env": {"OMP_NUM_THREADS": "1"},
        }
        resp = c.post(f"{API}/jobs", json=body)
        assert resp.status_code == 201, resp.text
        return resp.json()["id"]

    trainer = f"{py} {WORKERS / 'trainer.py'} --epochs 2 --n 96 --batch-size 4 --sleep 0.08 --checkpoint-every 3"
    survives = submit("survives", f"{py} {WORKERS / 'printer.py'} 3000")  # ~10 s, outlives the crash
    lost = submit("lost", f"{trainer} --out {tmp_path / 'lost'}")  # its run is killed while the server is down
    waits = submit("waits", f"{trainer} --out {tmp_path / 'waits'}", gpus=2)  # pending at the crash

    def state(job_id: int) -> dict:
        return c.get(f"{API}/jobs/{job_id}").json()

    deadline = time.monotonic() + 60
    while not (
        state(survives)["state"] == state(lost)["state"] == "RUNNING"
        and (tmp_path / "lost" / "samples-0-0.jsonl").exists()
        and len((tmp_path / "lost" / "samples-0-0.jsonl").read_text().splitlines()) >= 5
    ):
        assert time.monotonic() < deadline, [state(j) for j in (survives, lost, waits)]
        time.sleep(0.1)
    assert state(waits)["state"] == "PENDING"
    lost_run = _run_tree(home, lost)
    assert lost_run, "the run of `lost` was not found"

    server.send_signal(signal.SIGKILL)
    server.wait()
    # While the service is down: one run ends on its own later, one is killed outright.
    for proc in lost_run:
        proc.kill()
    psutil.wait_procs(lost_run, timeout=10)
    # The kill must land mid-run for the test to mean anything: a run that had already
    # finished (a slow poll on a loaded machine) would rightly be adopted as SUCCEEDED.
    assert not (tmp_path / "lost" / "trace-0-0.json").exists(), "the run ended before it was killed"
    assert not (home / "jobs" / str(lost) / "attempt-1.exit").exists()
    time.sleep(1)

    server = start_server(home, port, "--db", db_url)
    try:
        deadline = time.monotonic() + 240
        while any(state(j)["state"] not in ("SUCCEEDED", "FAILED", "CANCELLED") for j in (survives, lost, waits)):
            assert time.monotonic() < deadline, [state(j) for j in (survives, lost, waits)]
            time.sleep(0.5)
        s, lo, w = state(survives), state(lost), state(waits)
        assert (s["state"], lo["state"], w["state"]) == ("SUCCEEDED", "SUCCEEDED", "SUCCEEDED")
        # The surviving run was adopted, not started again: one attempt, each line once.
        assert s["attempt"] == 1
        lines = (home / "jobs" / str(survives) / "logs" / "rank-0.log").read_text().splitlines()
        assert lines == [f"line {i}" for i in range(3000)]
        # The killed run was requeued and resumed from its checkpoint.
        assert lo["attempt"] == 2 and lo["restarts"] == 0
        causes = [e["cause"] for e in c.get(f"{API}/jobs/{lost}/events").json()["events"]]
        assert any("run lost" in cause for cause in causes)
        final = json.loads((tmp_path / "lost" / "trace-0-0.json").read_text())
        assert final["resumed_from"] and final["resumed_from"] > 0
        assert w["attempt"] == 1
        assert len(c.get(f"{API}/jobs").json()["jobs"]) == 3  # none lost, none duplicated
    finally:
        stop_server(server, home)


def stop_server(server: subprocess.Popen[bytes], home: Path) -> None:
    """Stop a `corral server` and every run it left (runs outlive the service by design; a test must not)."""
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
    runs = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "corral.control.runner" in cmd and any(a.startswith(f"{home}/jobs/") for a in cmd):
            try:
                runs += [proc, *proc.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
    for proc in runs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(runs, timeout=10)


def _run_tree(home: Path, job_id: int) -> list[psutil.Process]:
    """Every process of the run of `job_id` under `home`: runner, launcher, workers (what a lost machine loses).

    Matched by the full path of the job's folder: a run another test left behind has the same job id.
    """
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "corral.control.runner" in cmd and any(a.startswith(f"{home}/jobs/{job_id}/attempt-") for a in cmd):
            return [proc, *proc.children(recursive=True)]
    return []
    raise AssertionError(f"no run of job {job_id}")
