"""`corral server --executor ray`: a SIGKILLed service adopts its gang; bad input is one line, nothing started."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import httpx
import pytest

from corral.control.server import free_port
from tests.conftest import ROOT, WORKERS, run_corral
from tests.control.test_cli import refused
from tests.control.test_server_crash import start_server

pytestmark = pytest.mark.slow
API = "/api/v1"


def test_service_sigkilled_while_a_ray_job_runs_ends_it_exactly_once(ray_cluster, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    port = free_port()
    opts = ("--executor", "ray", "--ray-address", ray_cluster.address)
    server = start_server(home, port, *opts, devices=None)
    token = (home / "admin-token").read_text().strip()
    c = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    try:
        cluster = c.get(f"{API}/cluster").json()
        assert cluster["total"] == 6 and [n["name"] for n in cluster["nodes"]] == ["n0", "n1", "n2"]
        assert all(n["labels"]["type"] == "slot" for n in cluster["nodes"])
        body = {
            "name": "survives",
            "entrypoint": f"{sys.executable} {WORKERS / 'printer.py'} 2500",
            "workdir": str(ROOT),
            "resources": {"gpus": 2},
            "env": {"OMP_NUM_THREADS": "1"},
        }
        job = c.post(f"{API}/jobs", json=body).json()["id"]
        log0 = home / "jobs" / str(job) / "logs" / "rank-0.log"
        deadline = time.monotonic() + 60
        while not (log0.exists() and log0.stat().st_size > 0):
            assert time.monotonic() < deadline, c.get(f"{API}/jobs/{job}").json()
            time.sleep(0.1)
        server.send_signal(signal.SIGKILL)
        server.wait()
        time.sleep(1)
        server = start_server(home, port, *opts, devices=None)
        deadline = time.monotonic() + 90
        while (state := c.get(f"{API}/jobs/{job}").json())["state"] != "SUCCEEDED":
            assert time.monotonic() < deadline and state["state"] in ("RUNNING", "PENDING"), state
            time.sleep(0.3)
        assert state["attempt"] == 1  # adopted, never started again
        events = c.get(f"{API}/jobs/{job}/events").json()["events"]
        assert [e["dst"] for e in events].count("SUCCEEDED") == 1
        assert [e["dst"] for e in events].count("RUNNING") == 1
        # Each rank's output is in the service's home once, across the restart.
        for rank in range(2):
            lines = (home / "jobs" / str(job) / "logs" / f"rank-{rank}.log").read_text().splitlines()
            assert lines == [f"line {i}" for i in range(2500)]
        # A job larger than the cluster is refused at submit, naming the cluster's size.
        big = c.post(f"{API}/jobs", json={**body, "resources": {"gpus": 7}})
        assert big.status_code in (400, 422) and "this cluster has 6" in big.text, big.text
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


def test_ray_server_bad_input_is_one_line_and_starts_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    base = ["server", "--port", str(free_port()), "--home", str(home), "--executor", "ray"]
    refused(run_corral(*base, "--ray-address", f"127.0.0.1:{free_port()}"), "cannot reach the Ray cluster")
    refused(run_corral(*base, "--ray-address", "nohost"), "--ray-address must be auto or HOST:PORT")
    refused(run_corral(*base, "--placement-timeout", "0"), "--placement-timeout")
    local = ["server", "--port", str(free_port()), "--home", str(home)]
    refused(run_corral(*local, "--ray-address", "127.0.0.1:1"), "go with --executor ray")
    # Ray not installed: one line saying how to install the extra.
    code = (
        "import sys; sys.modules['ray'] = None; from corral.cli import entry; "
        f"sys.argv = ['corral', *{base!r}]; entry()"
    )
    import subprocess

    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=dict(os.environ), timeout=120
    )
    refused(r, "pip install 'corral[ray]'")
    assert not home.exists()
