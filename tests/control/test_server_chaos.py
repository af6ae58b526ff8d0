"""Chaos with real processes: 30 short jobs on a real `corral server`, SIGKILLed three times at seeded random moments.

Succeeding trainers (checkpointing), jobs that fail once with max_restarts 1, long jobs the test cancels (one
cancel right before a kill: in flight when the service dies) and high-priority jobs that preempt the others.
After each kill the server starts again on the same home and database. At the end every job ended exactly
once in the state it had to, no job ran two runs at once (from the events and from the executor's own
per-run files), and no process of any run is left.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from corral.control.server import free_port
from tests.conftest import ROOT, WORKERS
from tests.control.test_demo import _processes_under
from tests.control.test_server_crash import start_server

pytestmark = pytest.mark.slow
API = "/api/v1"
SEED = int(os.environ.get("CORRAL_CHAOS_SEED", "1210"))
TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED")
KINDS = ["ok"] * 19 + ["fail-once"] * 5 + ["cancel"] * 3 + ["urgent"] * 3  # 30 jobs
SUBMIT_WITHIN = 30.0  # seconds: the window of submissions
KILLS = 3


@dataclass
class Planned:
    name: str
    kind: str
    at: float  # seconds after the start: submission
    body: dict
    cancel_at: float | None = None
    expect: str = "SUCCEEDED"


def _plan(rng: random.Random, out: Path) -> tuple[list[Planned], list[float]]:
    """The seeded workload (what, when, expected end) and the moments the server is SIGKILLed.

    Three long jobs come first and hold every device; only the test's cancel ends them. One (priority 5) is
    cancelled while it runs, and the server is killed right after (the cancel is in flight when it dies). The
    two others (priority -5) are preempted by whatever arrives next, resume when devices free up, and are
    cancelled later. The jobs of priority 0 (trainers, and jobs that fail once) and 10 (urgent, 2 devices,
    preempting priority 0 trainers) arrive at random moments.
    """
    py = sys.executable
    trainer = f"{py} {WORKERS / 'trainer.py'} --n 48 --batch-size 4 --checkpoint-every 3"
    jobs: list[Planned] = []

    def add(kind: str, at: float, entrypoint: str, **spec: object) -> Planned:
        name = f"{kind}-{len(jobs)}"
        body = {
            "name": name,
            "workdir": str(ROOT),
            "env": {"OMP_NUM_THREADS": "1"},
            "resources": {"gpus": 1},
            "entrypoint": entrypoint.replace("{out}", str(out / name)),
            **spec,
        }
        jobs.append(Planned(name, kind, at, body))
        return jobs[-1]

    long_run = f"{trainer} --epochs 500 --sleep 0.1 --out {{out}}"  # far too long to finish by itself
    for prio in (5, -5, -5):
        job = add("cancel", rng.uniform(0.0, 1.0), long_run, priority=prio)
        job.cancel_at = rng.uniform(4.0, 7.0) if prio > 0 else rng.uniform(12.0, SUBMIT_WITHIN + 5)
        job.expect = "CANCELLED"
    for _ in range(KINDS.count("ok")):  # ~1 s of training after start-up
        add(
            "ok",
            rng.uniform(2.0, SUBMIT_WITHIN),
            f"{trainer} --epochs 1 --sleep 0.05 --out {{out}}",
            resources={"gpus": rng.choice([1, 1, 2])},
        )
    for _ in range(KINDS.count("fail-once")):  # exit 7 the first time, fine on its restart; not a Job API script
        add(
            "fail-once",
            rng.uniform(2.0, SUBMIT_WITHIN),
            f"{py} {WORKERS / 'fail_first_run.py'}",
            max_restarts=1,
            preemptible=False,
        )
    for _ in range(KINDS.count("urgent")):
        add(
            "urgent",
            rng.uniform(8.0, SUBMIT_WITHIN + 5),
            f"{trainer} --epochs 1 --sleep 0.05 --out {{out}}",
            priority=10,
            resources={"gpus": 2},
        )
    assert len(jobs) == len(KINDS)
    kills = [jobs[0].cancel_at + 0.2]  # type: ignore[operator]
    while len(kills) < KILLS:
        t = rng.uniform(10.0, SUBMIT_WITHIN + 15)
        if all(abs(t - k) > 6.0 for k in kills):
            kills.append(t)
    return jobs, sorted(kills)


@pytest.mark.timeout(900)
def test_server_sigkilled_three_times_every_job_ends_once_in_the_right_state(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    home = tmp_path / "home"
    home.mkdir()
    jobs, kills = _plan(rng, tmp_path / "out")
    port = free_port()
    server = start_server(home, port)
    token = (home / "admin-token").read_text().strip()
    c = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    ids: dict[str, int] = {}
    actions = sorted(
        [(j.at, "submit", j) for j in jobs]
        + [(j.cancel_at, "cancel", j) for j in jobs if j.cancel_at]
        + [(t, "kill", None) for t in kills],
        key=lambda a: a[0],
    )
    t0 = time.monotonic()
    killed = 0
    try:
        for at, what, job in actions:
            time.sleep(max(0.0, t0 + at - time.monotonic()))
            if what == "submit":
                r = c.post(f"{API}/jobs", json=job.body)
                assert r.status_code == 201, r.text
                ids[job.name] = r.json()["id"]
            elif what == "cancel":
                r = c.post(f"{API}/jobs/{ids[job.name]}/cancel")
                assert r.status_code in (200, 409), r.text  # 409: it already ended (the state check says how)
            else:
                server.send_signal(signal.SIGKILL)
                server.wait()
                killed += 1
                time.sleep(rng.uniform(0.0, 1.5))  # runs go on (and some end) while no service watches them
                server = start_server(home, port)
        assert killed == KILLS

        # Only a guard against a hang (a loaded machine runs the 30 jobs slowly): the checks are on states.
        deadline = time.monotonic() + 480
        while True:
            listed = c.get(f"{API}/jobs", params={"limit": 1000}).json()["jobs"]
            if all(j["state"] in TERMINAL for j in listed) and len(listed) == len(jobs):
                break
            assert time.monotonic() < deadline, [
                (j["name"], j["state"], j["reason"]) for j in listed if j["state"] not in TERMINAL
            ]
            time.sleep(0.5)
        wall = time.monotonic() - t0

        # None lost, none duplicated, each in the state it had to end in.
        by_name = {j["name"]: j for j in listed}
        assert len(listed) == len(jobs) and set(by_name) == {j.name for j in jobs}
        got = {j.name: by_name[j.name]["state"] for j in jobs}
        assert got == {j.name: j.expect for j in jobs}, _explain(c, by_name, got, {j.name: j.expect for j in jobs})
        for j in jobs:
            if j.kind == "fail-once":
                assert by_name[j.name]["restarts"] == 1, by_name[j.name]
        preemptions = sum(j["preemptions"] for j in listed)
        assert preemptions >= 1, "no job was preempted: the urgent jobs did not exercise preemption"

        for j in jobs:
            job = by_name[j.name]
            events = c.get(f"{API}/jobs/{job['id']}/events").json()["events"]
            # Exactly one end, the last event, the expected one.
            ends = [e["dst"] for e in events if e["dst"] in TERMINAL]
            assert ends == [j.expect] and events[-1]["dst"] == j.expect, (j.name, events)
            # Never two runs at once: every RUNNING follows the end (or stop) of the run before it.
            running = False
            for e in events:
                if e["dst"] == "RUNNING":
                    assert not running, (j.name, events)
                    running = True
                elif e["src"] == "RUNNING":
                    running = False
            # The executor's own record of every run (pid file at its start, exit file at its end): as many runs
            # as the events start, none of them overlapping the next.
            jd = home / "jobs" / str(job["id"])
            starts = sum(1 for e in events if e["dst"] == "RUNNING")
            attempts = sorted(int(p.name.split("-")[1].split(".")[0]) for p in jd.glob("attempt-*.pid"))
            assert len(attempts) == starts and max(attempts, default=0) <= job["attempt"], (j.name, attempts, events)
            for a, b in zip(attempts, attempts[1:]):
                ended = (jd / f"attempt-{a}.exit").stat().st_mtime
                assert ended <= (jd / f"attempt-{b}.pid").stat().st_mtime, (j.name, a, b)
    finally:
        c.close()
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    deadline = time.monotonic() + 15
    while _processes_under(home) and time.monotonic() < deadline:  # a run that ended may still be exiting
        time.sleep(0.2)
    assert not _processes_under(home), _processes_under(home)
    print(
        f"seed {SEED}: {len(jobs)} jobs, {KILLS} kills at {[round(k, 1) for k in kills]} s, "
        f"{preemptions} preemptions, all ended in {wall:.0f} s"
    )


def _explain(c: httpx.Client, by_name: dict, got: dict, want: dict) -> list:
    """For a failed check: the jobs whose end differs, with their events."""
    return [
        (
            name,
            got[name],
            want[name],
            [
                (e["src"], e["dst"], e["cause"])
                for e in c.get(f"{API}/jobs/{by_name[name]['id']}/events").json()["events"]
            ],
        )
        for name in got
        if got[name] != want[name]
    ]
