"""A workload against a live `corral server`: the helper the live benchmarks share (sim_live.py, adaptive.py).

`run_workload(policy, submissions, console)` starts a `corral server` in its own
process (local executor, its own home, 1 s rounds by default), submits each job
spec at its offset in seconds, polls until every job has ended (a rich progress
bar shows jobs done and the devices each running job holds), and returns every
job as the API lists it, with its events, its reported metrics and `t0` (the
wall-clock time of offset 0).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import Progress

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from corral.control.server import free_port, wait_until_serving  # noqa: E402

API = "/api/v1"
ENDED = ("SUCCEEDED", "FAILED", "CANCELLED")


def run_workload(
    policy: str,
    submissions: Sequence[tuple[float, dict[str, Any]]],
    console: Console,
    *,
    devices: int = 4,
    round_s: float = 1.0,
    grace_s: float = 10.0,
    label: str | None = None,
    home_prefix: str = "corral-live-",
    timeout_s: float = 1800.0,
) -> list[dict[str, Any]]:
    """Submit `(offset s, job spec)` pairs to a fresh live server under `policy`; every job once all have ended.

    Raises SystemExit when a job does not succeed or the run takes over `timeout_s`.
    """
    home = Path(tempfile.mkdtemp(prefix=home_prefix))
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "corral.cli",
            "server",
            "--home",
            str(home),
            "--port",
            str(port),
            "--devices",
            str(devices),
            "--round",
            str(round_s),
            "--grace",
            str(grace_s),
            "--policy",
            policy,
        ],
        env=dict(os.environ, CORRAL_HOME=str(home)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    label = label or f"live {policy}"
    try:
        wait_until_serving(url, proc)
        token = (home / "admin-token").read_text().strip()
        with (
            httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as c,
            Progress(console=console, transient=True) as bar,
        ):
            task = bar.add_task(label, total=len(submissions))
            t0 = time.time()
            pending = sorted(submissions, key=lambda s: s[0])
            while True:
                now = time.time() - t0
                while pending and pending[0][0] <= now:
                    _, body = pending.pop(0)
                    r = c.post(f"{API}/jobs", json=body)
                    if r.status_code != 201:
                        raise SystemExit(f"submitting {body.get('name')} failed: {r.status_code} {r.text}")
                jobs = c.get(f"{API}/jobs").json()["jobs"]
                done = sum(j["state"] in ENDED for j in jobs)
                held = [len(j["devices"]) for j in jobs if j["state"] == "RUNNING" and j["devices"]]
                sizes = "+".join(str(d) for d in held) or "none"
                bar.update(task, completed=done, description=f"{label} [{now:4.0f} s, devices {sizes}]")
                if not pending and done == len(submissions):
                    break
                if now > timeout_s:
                    raise SystemExit(f"live run under {policy} took over {timeout_s:.0f} s")
                time.sleep(1)
            out = []
            for j in jobs:
                j["events"] = c.get(f"{API}/jobs/{j['id']}/events").json()["events"]
                j["metrics"] = c.get(f"{API}/jobs/{j['id']}/metrics").json()["metrics"]
                j["t0"] = t0
                out.append(j)
            failed = [j["name"] for j in out if j["state"] != "SUCCEEDED"]
            if failed:
                raise SystemExit(f"live jobs did not succeed under {policy}: {failed} (server home: {home})")
            return out
    finally:
        proc.terminate()
        proc.wait(30)
