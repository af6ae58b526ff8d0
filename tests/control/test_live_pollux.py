"""Live `pollux` with real processes: a real `corral server` resizes jobs by the models fitted from their reports.

Three elastic jobs on 4 device slots. `poor` scales badly (each replica beyond the first adds 0.3 s to a
0.05 s step), `good` scales perfectly. `poor` first runs alone on the one free device and reports its step
time there; when devices free up, Pollux (which knows only that one point, so no sync cost) grows it to 2
beside `good`. Once `poor` has reported its step time on 2 replicas, its fitted model says 2 devices are
slower than 1, and Pollux shrinks it back to 1, while `good` keeps its devices. With the default model that
every job has before its reports, Pollux would have kept 2 and 2. A third elastic job then takes the freed
device, and the live allocation of all three is the one Pollux computes from their three fitted models.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import httpx
import pytest

from corral.control.executors.local import NODE
from corral.control.server import free_port
from corral.control.store import EFFICIENCY_KEY, Store
from corral.control.views import job_view, throughput_model
from corral.goodput import DEFAULT_MODEL
from corral.sched import policies
from corral.sched.types import ClusterView, Node
from tests.conftest import ROOT, WORKERS
from tests.control.test_server_crash import start_server, stop_server

pytestmark = pytest.mark.slow
API = "/api/v1"


def _trainer(out: Path, extra: str = "") -> str:
    return (
        f"{sys.executable} {WORKERS / 'trainer.py'} --out {out} --epochs 50 --n 2000 --batch-size 4 --sleep 0.05 "
        f"--checkpoint-every 1000 --per-run {extra}"
    )


def _sizes(c: httpx.Client, job_id: int) -> list[int]:
    """Device counts of the job's runs, in order."""
    events = c.get(f"{API}/jobs/{job_id}/events").json()["events"]
    return [sum(len(d) for d in e["data"]["allocation"].values()) for e in events if e["dst"] == "RUNNING"]


def _wait(what, timeout: float, explain) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, explain()
        time.sleep(0.3)


def test_pollux_shrinks_the_job_its_fitted_model_says_scales_badly(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    port = free_port()
    server = start_server(home, port, "--policy", "pollux", devices=4, round_s=1.0)
    store = Store(f"sqlite:///{home / 'corral.db'}")  # the service's own record, to read the reports it fitted
    token = (home / "admin-token").read_text().strip()
    c = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"}, timeout=30)

    def submit(name: str, entrypoint: str, gpus: int, lo: int, hi: int) -> int:
        body = {
            "name": name,
            "workdir": str(ROOT),
            "env": {"OMP_NUM_THREADS": "1"},
            "entrypoint": entrypoint,
            "resources": {"gpus": gpus, "min_gpus": lo, "max_gpus": hi},
        }
        r = c.post(f"{API}/jobs", json=body)
        assert r.status_code == 201, r.text
        return r.json()["id"]

    def state() -> list:
        return [(j["name"], j["state"], j["devices"]) for j in c.get(f"{API}/jobs").json()["jobs"]]

    try:
        blocker = submit("blocker", f"{sys.executable} {WORKERS / 'sleeper.py'}", 3, 3, 3)
        _wait(lambda: c.get(f"{API}/jobs/{blocker}").json()["state"] == "RUNNING", 60, state)
        poor = submit("poor", _trainer(tmp_path / "poor", "--sleep-per-replica 0.3"), 1, 1, 4)
        _wait(lambda: "1,1,4" in (store.get_job(poor).observations or {}), 90, state)
        c.post(f"{API}/jobs/{blocker}/cancel")
        good = submit("good", _trainer(tmp_path / "good"), 1, 1, 4)
        # Pollux grows `poor` to 2 beside `good`, then shrinks it back to 1 once its 2-replica reports arrive.
        _wait(lambda: _sizes(c, poor) == [1, 2, 1], 150, lambda: (state(), store.get_job(poor).observations))
        _wait(lambda: c.get(f"{API}/jobs/{poor}").json()["state"] == "RUNNING", 60, state)
        observed = store.get_job(poor).observations
        # Step times from the two configurations it ran; its noise scale rides beside them (a fixed batch: unused).
        assert set(observed) - {EFFICIENCY_KEY} == {"1,1,4", "1,2,4"}, observed
        assert _sizes(c, good) == [2]  # `good` was never resized: it kept its 2 devices throughout
        # The shrink is the fitted model's doing: it says 2 devices are slower than 1 for `poor`,
        # where the default model (all Pollux had before the reports) says they are faster.
        fitted = throughput_model(observed, 4)
        assert fitted is not None and fitted.speedup(1, 2) < 1.0 < DEFAULT_MODEL.speedup(1, 2)
        assert c.get(f"{API}/jobs/{poor}").json()["resizes"] == 2
        # A third elastic job takes the device `poor` gave back (4 slots tile as 1 + 2 + 1). Once all three have
        # reported, the live allocation is what Pollux decides on the three models fitted from their reports.
        late = submit("late", _trainer(tmp_path / "late"), 1, 1, 4)
        _wait(lambda: "1,1,4" in (store.get_job(late).observations or {}), 90, state)
        jobs = {j: store.get_job(j) for j in (poor, good, late)}
        assert all(v.state == "RUNNING" for v in jobs.values()), state()
        views = [job_view(v) for v in jobs.values()]
        assert all(v.throughput is not None for v in views)  # every job has its fitted model, none the default
        decision = policies.get("pollux").schedule(time.time(), views, ClusterView((Node(NODE, 4, {}),)))
        planned = {int(j): a.num_devices for j, a in decision.allocations.items()}
        assert planned == {poor: 1, good: 2, late: 1} == {j: v.allocation.num_devices for j, v in zip(jobs, views)}
        for job in (poor, good, late):
            c.post(f"{API}/jobs/{job}/cancel")
        _wait(lambda: all(s == "CANCELLED" for _, s, _ in state()), 60, state)
    finally:
        c.close()
        stop_server(server, home)
