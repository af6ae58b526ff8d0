"""The service under load: submit -> RUNNING latency, submissions per second, one round with 1,000 queued jobs.

    python benchmarks/service.py [--latency-runs 10] [--submissions 1000] [--threads 8]

1. Latency: `corral server` (a separate process, SQLite, 4 device slots) on
   an idle cluster; a job is submitted, the client polls until it is
   RUNNING; the server's own events give submit -> RUNNING without the
   polling delay. Each job is cancelled before the next. Goal <= 1 s.
2. Throughput: while one non-preemptible job holds every device, T threads
   submit N jobs over HTTP (each its own transaction). Baseline, side by
   side: the same N inserts straight into the store in this process, the
   ceiling of the database itself. Goal >= 200 submissions/s.
3. One scheduling round with 1,000 queued jobs (in this process, median of 9
   rounds): store snapshot + policy + diff, no job can start.

Writes benchmarks/results/service.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from corral.control.executors.local import LocalExecutor  # noqa: E402
from corral.control.scheduler import Scheduler  # noqa: E402
from corral.control.server import free_port, wait_until_serving  # noqa: E402
from corral.control.states import JobState  # noqa: E402
from corral.control.store import Store  # noqa: E402
from corral.sched import policies  # noqa: E402

API = "/api/v1"
IDLE = ROOT / "benchmarks" / "jobs" / "idle.py"


def job(name: str, gpus: int = 1, priority: int = 0, seconds: float = 600, preemptible: bool = True) -> dict:
    return {
        "name": name,
        "entrypoint": f"{sys.executable} {IDLE} {seconds}",
        "workdir": str(ROOT),
        "resources": {"gpus": gpus},
        "priority": priority,
        "preemptible": preemptible,
        "env": {"OMP_NUM_THREADS": "1"},
    }


def start_server(home: Path, port: int) -> subprocess.Popen[bytes]:
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
            "4",
            "--round",
            "5",
            "--grace",
            "2",
        ],
        env=dict(os.environ, CORRAL_HOME=str(home)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    if not wait_until_serving(f"http://127.0.0.1:{port}", proc):
        raise SystemExit("corral server did not start")
    return proc


def wait_state(c: httpx.Client, job_id: int, states: set[str], poll: float = 0.005) -> dict:
    while True:
        j = c.get(f"{API}/jobs/{job_id}").json()
        if j["state"] in states:
            return j
        time.sleep(poll)


def latency(c: httpx.Client, runs: int) -> dict:
    client_s, server_s = [], []
    for i in range(runs):
        t0 = time.perf_counter()
        jid = c.post(f"{API}/jobs", json=job(f"lat{i}")).json()["id"]
        wait_state(c, jid, {"RUNNING"})
        client_s.append(time.perf_counter() - t0)
        ev = c.get(f"{API}/jobs/{jid}/events").json()["events"]
        server_s.append(ev[1]["time"] - ev[0]["time"])
        c.post(f"{API}/jobs/{jid}/cancel")
        wait_state(c, jid, {"CANCELLED"}, poll=0.05)
    return {
        "client_median_s": statistics.median(client_s),
        "client_max_s": max(client_s),
        "server_median_s": statistics.median(server_s),
        "server_max_s": max(server_s),
    }


def throughput(url: str, token: str, n: int, threads: int) -> float:
    per = n // threads
    barrier = threading.Barrier(threads + 1)
    failures: list[str] = []

    def worker(k: int) -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as c:
            barrier.wait()
            for i in range(per):
                r = c.post(f"{API}/jobs", json=job(f"t{k}-{i}"))
                if r.status_code != 201:
                    failures.append(r.text)

    ts = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in ts:
        t.join()
    dt = time.perf_counter() - t0
    if failures:
        raise SystemExit(f"{len(failures)} submissions failed: {failures[0]}")
    return per * threads / dt


def store_inserts(n: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        store = Store(f"sqlite:///{d}/db.sqlite")
        spec = job("x")
        t0 = time.perf_counter()
        for i in range(n):
            store.add_job({**spec, "name": f"s{i}"}, "admin")
        return n / (time.perf_counter() - t0)


def round_with_queue(queued: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        store = Store(f"sqlite:///{d}/db.sqlite")
        blocker = store.add_job(job("blocker", gpus=4, priority=1000, preemptible=False), "admin")
        with store.session() as s:
            from corral.control.store import Job

            b = s.get(Job, blocker.id)
            store.transition(s, b, JobState.RUNNING, "bench")
            b.allocation, b.run_start = {"local": [0, 1, 2, 3]}, time.time()
        for i in range(queued):
            store.add_job(job(f"q{i}"), "admin")
        sched = Scheduler(store, LocalExecutor(4, Path(d) / "home"), policies.get("priority"))
        times = []
        for _ in range(9):
            t0 = time.perf_counter()
            sched.round()
            times.append(time.perf_counter() - t0)
        pending = len(store.list_jobs(states=["PENDING"], limit=10_000))
        assert pending == queued, pending
        return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--latency-runs", type=int, default=10)
    p.add_argument("--submissions", type=int, default=1000)
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--queued", type=int, default=1000)
    args = p.parse_args()
    console = Console()
    with tempfile.TemporaryDirectory() as d:
        home = Path(d)
        port = free_port()
        server = start_server(home, port)
        url = f"http://127.0.0.1:{port}"
        token = (home / "admin-token").read_text().strip()
        try:
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as c:
                console.print(f"latency: {args.latency_runs} jobs on an idle cluster...")
                lat = latency(c, args.latency_runs)
                blocker = c.post(f"{API}/jobs", json=job("blocker", gpus=4, priority=1000, preemptible=False)).json()
                wait_state(c, blocker["id"], {"RUNNING"})
                console.print(f"throughput: {args.submissions} submissions from {args.threads} threads...")
                api_rate = throughput(url, token, args.submissions, args.threads)
                c.post(f"{API}/jobs/{blocker['id']}/cancel")
        finally:
            server.terminate()
            server.wait(timeout=30)
            # Runs outlive the service by design: stop what the benchmark started.
            subprocess.run(["pkill", "-f", str(IDLE)], check=False)
    console.print("baseline: the same inserts straight into the store...")
    db_rate = store_inserts(args.submissions)
    console.print(f"one round with {args.queued} queued jobs...")
    round_s = round_with_queue(args.queued)

    result = {
        "latency": lat,
        "latency_goal_s": 1.0,
        "submissions_per_s": api_rate,
        "store_inserts_per_s": db_rate,
        "api_vs_store": api_rate / db_rate,
        "submissions_goal_per_s": 200,
        "threads": args.threads,
        "submissions": args.submissions,
        "round_with_queue_s": round_s,
        "queued": args.queued,
    }
    table = Table(title="corral service")
    for col in ("measure", "value", "baseline / goal", "ratio"):
        table.add_column(col)
    table.add_row(
        "submit -> RUNNING (server events, median)",
        f"{lat['server_median_s'] * 1000:.0f} ms",
        "goal 1000 ms",
        f"{lat['server_median_s'] / 1.0:.3f} of goal",
    )
    table.add_row(
        "submit -> RUNNING (client sees it, median / max)",
        f"{lat['client_median_s'] * 1000:.0f} / {lat['client_max_s'] * 1000:.0f} ms",
        "goal 1000 ms",
        f"{lat['client_median_s'] / 1.0:.3f} of goal",
    )
    table.add_row(
        f"submissions/s over HTTP ({args.threads} threads)",
        f"{api_rate:,.0f}",
        f"store alone {db_rate:,.0f}/s; goal 200/s",
        f"{api_rate / db_rate:.2f} of store",
    )
    table.add_row(f"one round, {args.queued} queued jobs", f"{round_s * 1000:.1f} ms", "", "")
    console.print(table)
    out = ROOT / "benchmarks" / "results" / "service.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
