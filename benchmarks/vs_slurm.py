"""corral against a real one-node Slurm, side by side in one run, the same sleeper job for both.

    python benchmarks/vs_slurm.py [--runs 10] [--submissions 1000] [--cli-submissions 100]
                                  [--cli-budget 60] [--threads 8] [--cancel 1000] [--no-slurm]

Run it as root on a Debian machine: when Slurm or munge is missing it is
installed with `apt-get install slurmctld slurmd slurm-client munge` (the
console says so). A throwaway one-node Slurm (config of
/work/shared/SLURM-NOTES.md: 4 CPUs, cons_tres, backfill) then runs out of a
temporary folder: its own munge key and socket, free ports, state, spool and
logs; munged, slurmctld and slurmd are stopped by pid at the end and the folder
removed. When Slurm cannot be had (not root, no apt-get, install or start
fails, --no-slurm) the benchmark prints why and Slurm's column reads n/a.
Next to it a `corral server` (SQLite, local executor, 4 device slots) in a
temporary home. Every server talks on 127.0.0.1 only.

The job, for both: `python benchmarks/jobs/sleeper_first_line.py OUT 600`,
which writes time.time() to OUT as its first statement, prints a first line,
then sleeps. Measured, interleaved Slurm then corral for each step:

1. submit -> RUNNING, client polling (squeue every 10 ms; GET /jobs/ID every
   5 ms), and each system's own record of it (Slurm StartTime - SubmitTime,
   1 s resolution; corral's job events); submit -> the job's first line (from
   just before sbatch / POST to the time the job wrote, same clock). Idle
   cluster, n=--runs, median and p90; each job is cancelled before the next.
2. With a job holding every CPU / device so nothing starts: the wall time of
   one `sbatch` and of one `corral submit` (median of --runs, sequential);
   submissions/s through the CLI (`corral submit FILE --server ...`,
   --cli-submissions from --threads threads); --submissions jobs from
   --threads threads over corral's HTTP API and with sbatch (Slurm has no
   HTTP API here: sbatch is both its API and its CLI row).
3. Cancel --cancel queued jobs: Slurm `scancel -u root -t PENDING`; corral
   the bulk path when there is one (checked at run time: `corral cancel
   --help` offering --user/--state/--name, else a bulk cancel route in the
   server's OpenAPI), else one POST /jobs/ID/cancel per job. The path
   measured is printed and written to the JSON.

Prints a table measure | Slurm | corral | corral/Slurm | corral goal and writes
benchmarks/results/vs_slurm.json (with the load average, since the machine is
shared). A full run takes about 3-5 minutes (+ about a minute the first time,
for apt-get); no `corral submit` starts after --cli-budget seconds (default 60),
so a slow CLI on a loaded machine cannot stretch it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from service import API, start_server  # noqa: E402

from corral.control.server import free_port  # noqa: E402

SLEEPER = ROOT / "benchmarks" / "jobs" / "sleeper_first_line.py"
PY = sys.executable
CORRAL = str(Path(PY).with_name("corral"))
SLURM_TOOLS = ("sbatch", "squeue", "scancel", "scontrol", "sinfo", "slurmctld", "slurmd", "munged")
SLURM_PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
CPUS = 4  # Slurm CPUs of the one node == corral device slots
QUEUED_NAME = "vsq"  # every job queued for the bulk cancel carries this name
GOALS = {
    "first_line_s": 0.5,
    "cli_wall_s": 0.150,
    "cli_per_s": 15.0,
    "cancel_s": 1.0,
}

console = Console(width=None if sys.stdout.isatty() else 150)


# -- small helpers ---------------------------------------------------------------------


def median_p90(xs: list[float]) -> dict[str, float]:
    if len(xs) == 1:
        return {"median": xs[0], "p90": xs[0], "n": 1}
    return {
        "median": statistics.median(xs),
        "p90": statistics.quantiles(xs, n=10, method="inclusive")[-1],
        "n": len(xs),
    }


def read_first_line(path: Path, timeout: float) -> tuple[float, int] | None:
    """(time, pid) the sleeper wrote at its first statement, or None after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            t, pid = path.read_text().split()
            return float(t), int(pid)
        except (FileNotFoundError, ValueError):
            time.sleep(0.002)
    return None


def in_parallel(n: int, threads: int, one: Callable[[int], None], budget_s: float | None = None) -> tuple[int, float]:
    """Run one(i) for i in range(n) from `threads` threads, none started after `budget_s`: (calls, wall seconds)."""
    counter: Iterator[int] = itertools.count()
    lock = threading.Lock()
    barrier = threading.Barrier(threads + 1)
    errors: list[str] = []
    done: list[int] = []
    start = [0.0]

    def worker() -> None:
        barrier.wait()
        while True:
            with lock:
                late = budget_s is not None and time.perf_counter() - start[0] > budget_s
                i = n if late else next(counter)
            if i >= n or errors:
                return
            try:
                one(i)
                done.append(i)
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(repr(e))

    ts = [threading.Thread(target=worker) for _ in range(threads)]
    for t in ts:
        t.start()
    start[0] = time.perf_counter()
    barrier.wait()
    for t in ts:
        t.join()
    wall = time.perf_counter() - start[0]
    if errors:
        raise RuntimeError(f"{len(errors)} submissions failed, first: {errors[0]}")
    return len(done), wall


def kill_sleepers(pids: set[int]) -> None:
    """SIGKILL sleepers this benchmark started that are still alive (checked by their command line)."""
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if str(SLEEPER).encode() in cmdline:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def stop_process(proc: subprocess.Popen[bytes], name: str, timeout: float = 10) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        console.print(f"[yellow]{name} (pid {proc.pid}) ignored SIGTERM: killed[/]")
        proc.kill()
        proc.wait(timeout=timeout)


# -- Slurm -----------------------------------------------------------------------------


SLURM_CONF = """\
ClusterName=bench
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={d}/munge/munge.sock
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/run/slurmctld.pid
SlurmdPidFile={d}/run/slurmd.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
CommunicationParameters=NoInAddrAny,NoCtldInAddrAny
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


def ensure_slurm_installed() -> str | None:
    """None when Slurm and munge are on the PATH (installing them with apt-get if needed), else why not."""
    missing = [t for t in SLURM_TOOLS if shutil.which(t) is None]
    if not missing:
        return None
    if os.geteuid() != 0:
        return f"{', '.join(missing)} missing and not root: cannot apt-get install them"
    if shutil.which("apt-get") is None:
        return f"{', '.join(missing)} missing and no apt-get here"
    console.print(
        f"[bold]Slurm is not installed ({', '.join(missing)} missing): "
        f"apt-get install {' '.join(SLURM_PACKAGES)} (about a minute)...[/]"
    )
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *SLURM_PACKAGES]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        console.print("apt-get install failed; apt-get update, then once more...")
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=300)
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    missing = [t for t in SLURM_TOOLS if shutil.which(t) is None]
    if r.returncode != 0 or missing:
        tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
        return f"apt-get install {' '.join(SLURM_PACKAGES)} failed (rc {r.returncode}): {' / '.join(tail)}"
    console.print("installed Slurm and munge from Debian's packages")
    return None


class Slurm:
    """A throwaway one-node Slurm in folder `d`: munged, slurmctld and slurmd started here, stopped by pid."""

    def __init__(self, d: Path) -> None:
        self.d = d
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.sleepers: set[int] = set()
        self.conf = d / "slurm.conf"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))
        self.version = ""

    def start(self) -> None:
        d = self.d
        for sub in ("munge", "state", "spool", "run", "log", "out", "first"):
            (d / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        # munged wants its socket's folder, and every folder above it, searchable by all
        for folder in (d.parent, d, d / "munge"):
            folder.chmod(0o711)
        key = d / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        ctld_port = free_port()
        slurmd_port = free_port()
        while slurmd_port == ctld_port:
            slurmd_port = free_port()
        self.conf.write_text(SLURM_CONF.format(d=d, ctld_port=ctld_port, slurmd_port=slurmd_port, cpus=CPUS))
        m = d / "munge"
        self._spawn(
            "munged",
            [
                "munged",
                "--foreground",
                f"--key-file={m / 'munge.key'}",
                f"--socket={m / 'munge.sock'}",
                f"--pid-file={m / 'munged.pid'}",
                f"--log-file={m / 'munged.log'}",
                f"--seed-file={m / 'munged.seed'}",
            ],
        )
        self._wait_for(lambda: (m / "munge.sock").exists(), "munged's socket", d / "log" / "munged.stdout")
        self._spawn("slurmctld", ["slurmctld", "-D", "-f", str(self.conf)])
        self._wait_for(
            lambda: "UP" in self.run(["scontrol", "ping"], check=False).stdout,
            "slurmctld to answer",
            d / "log" / "slurmctld.log",
        )
        self._spawn("slurmd", ["slurmd", "-D", "-N", "localhost", "-f", str(self.conf)])
        self._wait_for(
            lambda: self.run(["sinfo", "-h", "-o", "%T"], check=False).stdout.strip() == "idle",
            "the node to be idle",
            d / "log" / "slurmd.log",
        )
        self.version = self.run(["sbatch", "--version"]).stdout.strip()

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.d / "log" / f"{name}.stdout", "wb")  # noqa: SIM115 - lives as long as the daemon
        proc = subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.procs.append((name, proc))

    def _wait_for(self, ok: Callable[[], bool], what: str, log: Path, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode} ({self._tail(log)})")
            if ok():
                return
            time.sleep(0.1)
        raise RuntimeError(f"timed out waiting for {what} ({self._tail(log)})")

    def _tail(self, log: Path) -> str:
        try:
            return " / ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
        except OSError:
            return "no log"

    def stop(self) -> None:
        """Cancel every job, then stop slurmd, slurmctld and munged (in that order) by pid."""
        if any(n == "slurmctld" and p.poll() is None for n, p in self.procs):
            self.run(["scancel", "-u", "root"], check=False)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and self.run(["squeue", "-h"], check=False).stdout.strip():
                time.sleep(0.2)
        for name, proc in reversed(self.procs):
            stop_process(proc, name)
        kill_sleepers(self.sleepers)

    def run(self, argv: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=120)
        if check and r.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:3])}...: rc {r.returncode}: {r.stderr.strip()}")
        return r

    def sbatch(self, out: str, name: str = "sleeper", cpus: int = 1) -> int:
        r = self.run(
            [
                "sbatch",
                "--parsable",
                "-J",
                name,
                "-n1",
                f"-c{cpus}",
                "-D",
                str(self.d),
                "-o",
                str(self.d / "out" / "%j.out"),
                "--wrap",
                f"exec {PY} {SLEEPER} {out} 600",
            ]
        )
        return int(r.stdout.strip().split(";")[0])

    def state(self, job_id: int) -> str:
        return self.run(["squeue", "-h", "-j", str(job_id), "-o", "%T"], check=False).stdout.strip()

    def wait_state(self, job_id: int, state: str, timeout: float = 60, poll: float = 0.01) -> None:
        deadline = time.monotonic() + timeout
        while self.state(job_id) != state:
            if time.monotonic() > deadline:
                raise RuntimeError(f"Slurm job {job_id} not {state} after {timeout} s")
            time.sleep(poll)

    def wait_gone(self, job_ids: list[int], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        ids = ",".join(map(str, job_ids))
        while self.run(["squeue", "-h", "-j", ids], check=False).stdout.strip():
            if time.monotonic() > deadline:
                raise RuntimeError(f"Slurm jobs {ids} still queued after {timeout} s")
            time.sleep(0.05)

    def own_start_delay(self, job_id: int) -> float | None:
        """StartTime - SubmitTime as Slurm recorded them (whole seconds)."""
        text = self.run(["scontrol", "show", "job", str(job_id)], check=False).stdout
        times = dict(re.findall(r"\b(SubmitTime|StartTime)=(\S+)", text))
        try:
            sub = dt.datetime.fromisoformat(times["SubmitTime"])
            start = dt.datetime.fromisoformat(times["StartTime"])
        except (KeyError, ValueError):
            return None
        return (start - sub).total_seconds()

    def pending(self) -> int:
        return len(self.run(["squeue", "-h", "-t", "PENDING", "-o", "%i"], check=False).stdout.split())


# -- corral ----------------------------------------------------------------------------


class Corral:
    """A `corral server` in a temporary home, reached over HTTP and through its CLI."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.sleepers: set[int] = set()
        self.token = ""
        self.cli_env = dict(os.environ, CORRAL_HOME=str(home))
        self.cli_env.pop("CORRAL_SERVER", None)
        self.cli_env.pop("CORRAL_TOKEN", None)

    def start(self) -> None:
        self.proc = start_server(self.home, self.port)
        self.token = (self.home / "admin-token").read_text().strip()
        self.http = httpx.Client(base_url=self.url, headers=self.headers, timeout=120)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def spec(self, out: str, name: str = "sleeper", gpus: int = 1, priority: int = 0) -> dict[str, Any]:
        return {
            "name": name,
            "entrypoint": f"{PY} {SLEEPER} {out} 600",
            "workdir": str(ROOT),
            "resources": {"gpus": gpus},
            "priority": priority,
            "preemptible": priority == 0,
            "env": {"OMP_NUM_THREADS": "1"},
        }

    def submit(self, spec: dict[str, Any], c: httpx.Client | None = None) -> int:
        r = (c or self.http).post(f"{API}/jobs", json=spec)
        if r.status_code != 201:
            raise RuntimeError(f"submit: {r.status_code} {r.text[:200]}")
        return int(r.json()["id"])

    def state(self, job_id: int) -> str:
        return str(self.http.get(f"{API}/jobs/{job_id}").json()["state"])

    def wait_state(self, job_id: int, states: set[str], timeout: float = 60, poll: float = 0.005) -> str:
        deadline = time.monotonic() + timeout
        while (s := self.state(job_id)) not in states:
            if time.monotonic() > deadline:
                raise RuntimeError(f"corral job {job_id} is {s}, not {states}, after {timeout} s")
            time.sleep(poll)
        return s

    def events(self, job_id: int) -> list[dict[str, Any]]:
        return list(self.http.get(f"{API}/jobs/{job_id}/events").json()["events"])

    def cancel(self, job_id: int) -> None:
        r = self.http.post(f"{API}/jobs/{job_id}/cancel")
        if r.status_code not in (200, 409):
            raise RuntimeError(f"cancel {job_id}: {r.status_code} {r.text[:200]}")

    def ids(self, state: str) -> list[int]:
        jobs = self.http.get(f"{API}/jobs", params={"state": state, "limit": 10_000}).json()["jobs"]
        return [int(j["id"]) for j in jobs]

    def cancel_all(self, state: str) -> None:
        for jid in self.ids(state):
            self.cancel(jid)

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [CORRAL, *args, "--server", self.url, "--token", self.token],
            env=self.cli_env,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
        )

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            if self.proc.poll() is None:
                for state in ("PENDING", "RUNNING"):
                    self.cancel_all(state)
                deadline = time.monotonic() + 15
                while self.ids("RUNNING") and time.monotonic() < deadline:
                    time.sleep(0.1)
            self.http.close()
        except (httpx.HTTPError, RuntimeError) as e:
            console.print(f"[yellow]corral cleanup: {e}[/]")
        finally:
            stop_process(self.proc, "corral server", timeout=30)
            self._kill_launchers()
            kill_sleepers(self.sleepers)

    def _kill_launchers(self) -> None:
        """Runs outlive the server by design: kill the launchers (own sessions) it started, by their pid files."""
        for pid_file in (self.home / "jobs").glob("*/attempt-*.pid"):
            try:
                pid = int(pid_file.read_text().strip())
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except (OSError, ValueError):
                continue
            if b"corral.control.runner" in cmdline and str(self.home).encode() in cmdline:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    # -- the bulk cancel paths present now ------------------------------------------------

    def bulk_cli_args(self) -> list[str] | None:
        """`corral cancel` arguments for a bulk cancel of the queued jobs, if its --help offers a filter."""
        r = subprocess.run([CORRAL, "cancel", "--help"], env=self.cli_env, capture_output=True, text=True)
        opts = set(re.findall(r"(--[a-z][a-z-]*)", r.stdout))
        args: list[str] = []
        if "--state" in opts:
            args += ["--state", "PENDING"]
        if "--name" in opts:
            args += ["--name", QUEUED_NAME]
        if "--user" in opts:
            args += ["--user", "admin"]
        if not args:
            return None
        args += [o for o in ("--yes", "--force-yes") if o in opts]
        return ["cancel", *args]

    def bulk_route(self) -> tuple[str, str] | None:
        """(method, path) of a bulk cancel route in the server's OpenAPI, if there is one."""
        paths = self.http.get("/openapi.json").json().get("paths", {})
        for path, ops in paths.items():
            if not path.startswith(f"{API}/jobs") or "{" in path:
                continue
            for method in ops:
                if (method == "post" and "cancel" in path) or method == "delete":
                    return method.upper(), path
        return None

    def bulk_route_request(self, method: str, path: str, ids: list[int]) -> httpx.Response:
        """Call a bulk cancel route, filling what its OpenAPI asks for: state, user, name or ids."""
        schema = self.http.get("/openapi.json").json()
        op = schema["paths"][path][method.lower()]

        def value(field: str, prop: dict[str, Any]) -> Any:
            is_list = prop.get("type") == "array" or any(a.get("type") == "array" for a in prop.get("anyOf", []))
            f = field.lower()
            v: Any
            if "id" in f:
                return ids
            if "state" in f:
                v = "PENDING"
            elif "user" in f or "owner" in f:
                v = "admin"
            elif "name" in f:
                v = QUEUED_NAME
            else:
                return None
            return [v] if is_list else v

        params = {}
        for p in op.get("parameters", []):
            if p.get("in") == "query" and (v := value(p["name"], p.get("schema", {}))) is not None:
                params[p["name"]] = v
        body: dict[str, Any] | None = None
        content = op.get("requestBody", {}).get("content", {}).get("application/json", {})
        if content:
            s = content.get("schema", {})
            if "$ref" in s:
                s = schema["components"]["schemas"][s["$ref"].rsplit("/", 1)[-1]]
            body = {}
            for field, prop in s.get("properties", {}).items():
                if (v := value(field, prop)) is not None:
                    body[field] = v
        return self.http.request(method, path, params=params, json=body)


# -- the measures ----------------------------------------------------------------------


def latency_slurm(s: Slurm, i: int) -> dict[str, float | None]:
    out = s.d / "first" / f"lat{i}"
    t_wall = time.time()
    t0 = time.perf_counter()
    jid = s.sbatch(str(out))
    s.wait_state(jid, "RUNNING")
    running = time.perf_counter() - t0
    first = read_first_line(out, 60)
    if first is None:
        raise RuntimeError(f"Slurm job {jid} never wrote its first line")
    s.sleepers.add(first[1])
    own = s.own_start_delay(jid)
    s.run(["scancel", str(jid)])
    s.wait_gone([jid])
    return {
        "running_s": running,
        "own_running_s": own,
        "first_line_s": first[0] - t_wall,
        "running_to_first_line_s": first[0] - t_wall - running,
    }


def latency_corral(c: Corral, i: int) -> dict[str, float | None]:
    out = c.home / f"first-lat{i}"
    t_wall = time.time()
    t0 = time.perf_counter()
    jid = c.submit(c.spec(str(out)))
    c.wait_state(jid, {"RUNNING"})
    running = time.perf_counter() - t0
    first = read_first_line(out, 60)
    if first is None:
        raise RuntimeError(f"corral job {jid} never wrote its first line")
    c.sleepers.add(first[1])
    ev = c.events(jid)
    t_submit = ev[0]["time"]
    t_running = next(e["time"] for e in ev if e["dst"] == "RUNNING")
    c.cancel(jid)
    c.wait_state(jid, {"CANCELLED", "FAILED", "SUCCEEDED"}, poll=0.05)
    return {
        "running_s": running,
        "own_running_s": t_running - t_submit,
        "first_line_s": first[0] - t_wall,
        "running_to_first_line_s": first[0] - t_wall - running,
        "own_running_to_first_line_s": first[0] - t_running,
    }


def summarize(runs: list[dict[str, float | None]]) -> dict[str, Any]:
    keys = runs[0].keys()
    out: dict[str, Any] = {}
    for k in keys:
        xs = [r[k] for r in runs if r[k] is not None]
        out[k] = median_p90([float(x) for x in xs if x is not None]) if xs else None
    out["runs"] = runs
    return out


def one_submission_walls(argv_of: Callable[[int], list[str]], runs: int, env: dict[str, str]) -> dict[str, Any]:
    """Wall and CPU (user+sys of the child) of `runs` sequential CLI submissions."""
    walls, cpus = [], []
    for i in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        r = subprocess.run(argv_of(i), env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        walls.append(time.perf_counter() - t0)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if r.returncode != 0:
            raise RuntimeError(f"{argv_of(i)[0]}: rc {r.returncode}: {r.stderr.strip()[-300:]}")
        cpus.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return {"wall_s": median_p90(walls), "cpu_s": median_p90(cpus)}


def cancel_corral(c: Corral, expected: int) -> dict[str, Any]:
    """Cancel the `expected` queued jobs by the fastest path corral has now; time until none is PENDING."""
    ids = c.ids("PENDING")
    assert len(ids) == expected, (len(ids), expected)
    notes: list[str] = []
    cli_args = c.bulk_cli_args()
    route = c.bulk_route()
    result: dict[str, Any] = {
        "jobs": len(ids),
        "cli_bulk_args_found": cli_args,
        "api_bulk_route_found": list(route) if route else None,
    }
    if cli_args is not None:
        t0 = time.perf_counter()
        r = c.cli(*cli_args)
        cmd_s = time.perf_counter() - t0
        left = len(c.ids("PENDING"))
        if r.returncode == 0 and left == 0:
            result.update(path=f"cli-bulk: corral {' '.join(cli_args)}", seconds=cmd_s, notes=notes)
            return result
        notes.append(f"corral {' '.join(cli_args)}: rc {r.returncode}, {left} left: {r.stderr.strip()[-200:]}")
    if route is not None:
        method, path = route
        ids = c.ids("PENDING")
        t0 = time.perf_counter()
        resp = c.bulk_route_request(method, path, ids)
        req_s = time.perf_counter() - t0
        left = len(c.ids("PENDING"))
        if resp.status_code < 300 and left == 0:
            result.update(path=f"api-bulk: {method} {path}", seconds=req_s, notes=notes)
            return result
        notes.append(f"{method} {path}: {resp.status_code}, {left} left: {resp.text[:200]}")
    ids = c.ids("PENDING")
    t0 = time.perf_counter()
    for jid in ids:
        c.cancel(jid)
    per_s = time.perf_counter() - t0
    left = len(c.ids("PENDING"))
    if left:
        raise RuntimeError(f"{left} corral jobs still PENDING after cancelling each")
    path = f"api-per-job: {len(ids)} x POST {API}/jobs/ID/cancel, one keep-alive client"
    if notes:
        path += f" (after failed bulk attempts, {len(ids)} of {expected} left)"
    result.update(path=path, seconds=per_s, jobs=len(ids), notes=notes)
    return result


# -- report ----------------------------------------------------------------------------


def fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "n/a"
    if unit == "ms":
        return f"{v * 1000:,.0f} ms"
    if unit == "s":
        return f"{v:,.2f} s"
    return f"{v:,.1f}/s"


def ratio(slurm: float | None, corral: float | None) -> str:
    if slurm is None or corral is None or slurm == 0:
        return "n/a"
    r = corral / slurm
    return f"{r:.2f}" if 0.1 <= r < 100 else f"{r:.3g}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=10, help="latency runs and single CLI submissions (each)")
    p.add_argument("--submissions", type=int, default=1000, help="API / sbatch submissions from --threads")
    p.add_argument("--cli-submissions", type=int, default=100, help="`corral submit` runs from --threads")
    p.add_argument("--cli-budget", type=float, default=60, help="seconds after which no new `corral submit` starts")
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--cancel", type=int, default=1000, help="queued jobs to cancel at once")
    p.add_argument("--no-slurm", action="store_true", help="corral's column only")
    args = p.parse_args()
    started = time.time()
    load_start = os.getloadavg()
    slurm_why: str | None = "--no-slurm" if args.no_slurm else None
    res: dict[str, Any] = {"slurm": {}, "corral": {}}

    with tempfile.TemporaryDirectory(prefix="vs_slurm-") as tmp:
        tmpd = Path(tmp)
        slurm: Slurm | None = None
        corral = Corral(tmpd / "corral")
        corral.home.mkdir()
        try:
            if slurm_why is None:
                slurm_why = ensure_slurm_installed()
            if slurm_why is None:
                slurm = Slurm(tmpd / "slurm")
                console.print(f"starting a one-node Slurm in {slurm.d} (munged, slurmctld, slurmd)...")
                try:
                    slurm.start()
                    console.print(f"{slurm.version}: up")
                except (RuntimeError, OSError, subprocess.SubprocessError) as e:
                    slurm_why = f"Slurm did not start: {e}"
            if slurm_why is not None:
                console.print(f"[yellow]no Slurm column: {slurm_why}[/]")
                slurm_on = None
            else:
                slurm_on = slurm
            console.print("starting corral server...")
            corral.start()

            # 1. latency on idle clusters, interleaved
            console.print(f"latency: {args.runs} jobs each, idle clusters...")
            lat_s, lat_c = [], []
            for i in range(args.runs):
                if slurm_on is not None:
                    lat_s.append(latency_slurm(slurm_on, i))
                lat_c.append(latency_corral(corral, i))
                time.sleep(0.3)
            res["slurm"]["latency"] = summarize(lat_s) if lat_s else None
            res["corral"]["latency"] = summarize(lat_c)

            # 2. submissions, with every CPU / device held so nothing starts
            console.print("blockers: one job holding every CPU / device...")
            if slurm_on is not None:
                b = slurm_on.sbatch("-", name="blocker", cpus=CPUS)
                slurm_on.wait_state(b, "RUNNING")
            cb = corral.submit(corral.spec("-", name="blocker", gpus=CPUS, priority=1000))
            corral.wait_state(cb, {"RUNNING"})

            console.print(f"one CLI submission, {args.runs} times each...")
            spec_file = corral.home / "sleeper.json"
            spec_file.write_text(json.dumps(corral.spec("-", name="cli")))
            if slurm_on is not None:
                sb = slurm_on
                res["slurm"]["cli_one"] = one_submission_walls(
                    lambda i: [
                        "sbatch",
                        "--parsable",
                        "-n1",
                        "-c1",
                        "-D",
                        str(sb.d),
                        "-o",
                        "/dev/null",
                        "--wrap",
                        f"exec {PY} {SLEEPER} - 600",
                    ],
                    args.runs,
                    sb.env,
                )
                sb.run(["scancel", "-u", "root", "-t", "PENDING"])
            res["corral"]["cli_one"] = one_submission_walls(
                lambda i: [CORRAL, "submit", str(spec_file), "--server", corral.url, "--token", corral.token],
                args.runs,
                corral.cli_env,
            )
            corral.cancel_all("PENDING")

            console.print(f"corral submit x{args.cli_submissions} from {args.threads} threads...")

            def cli_submit(i: int) -> None:
                r = corral.cli("submit", str(spec_file))
                if r.returncode != 0:
                    raise RuntimeError(f"corral submit: rc {r.returncode}: {r.stderr.strip()[-300:]}")

            n, wall = in_parallel(args.cli_submissions, args.threads, cli_submit, args.cli_budget)
            res["corral"]["cli_per_s"] = n / wall
            res["corral"]["cli_submissions"] = n
            if n < args.cli_submissions:
                console.print(
                    f"  [yellow]{n} of {args.cli_submissions} within the --cli-budget of {args.cli_budget:.0f} s[/]"
                )
            corral.cancel_all("PENDING")

            console.print(f"{args.submissions} submissions from {args.threads} threads (sbatch; HTTP)...")
            if slurm_on is not None:
                sb2 = slurm_on

                def one_sbatch(i: int) -> None:
                    sb2.sbatch("-", name=QUEUED_NAME)

                n, wall = in_parallel(args.submissions, args.threads, one_sbatch)
                res["slurm"]["submit_per_s"] = n / wall
                res["slurm"]["cli_per_s"] = res["slurm"]["submit_per_s"]
            local = threading.local()

            def one_post(i: int) -> None:
                if not hasattr(local, "c"):
                    local.c = httpx.Client(base_url=corral.url, headers=corral.headers, timeout=120)
                corral.submit(corral.spec("-", name=QUEUED_NAME), local.c)

            n, wall = in_parallel(args.submissions, args.threads, one_post)
            res["corral"]["submit_per_s"] = n / wall

            # 3. bulk cancel of `--cancel` queued jobs (top up or trim the queue to exactly that)
            console.print(f"cancel {args.cancel} queued jobs...")
            if slurm_on is not None:
                queued = slurm_on.pending()
                if queued < args.cancel:
                    for _ in range(args.cancel - queued):
                        slurm_on.sbatch("-", name=QUEUED_NAME)
                queued = slurm_on.pending()
                t0 = time.perf_counter()
                slurm_on.run(["scancel", "-u", "root", "-t", "PENDING"])
                cmd_s = time.perf_counter() - t0
                left = slurm_on.pending()
                res["slurm"]["cancel"] = {
                    "path": "scancel -u root -t PENDING",
                    "seconds": cmd_s,
                    "jobs": queued,
                    "left_after": left,
                }
            queued_c = len(corral.ids("PENDING"))
            for _ in range(args.cancel - queued_c):
                corral.submit(corral.spec("-", name=QUEUED_NAME))
            for jid in corral.ids("PENDING")[args.cancel :]:
                corral.cancel(jid)
            res["corral"]["cancel"] = cancel_corral(corral, args.cancel)
        finally:
            console.print("stopping corral server and Slurm...")
            corral.stop()
            if slurm is not None:
                slurm.stop()

    load_end = os.getloadavg()
    report(res, args, slurm_why, slurm.version if slurm and not slurm_why else None, started, load_start, load_end)


def report(
    res: dict[str, Any],
    args: argparse.Namespace,
    slurm_why: str | None,
    version: str | None,
    started: float,
    load_start: tuple[float, float, float],
    load_end: tuple[float, float, float],
) -> None:
    S, C = res["slurm"], res["corral"]

    def lat(side: dict[str, Any], key: str, stat: str) -> float | None:
        lat_ = side.get("latency")
        if not lat_ or not lat_.get(key):
            return None
        return float(lat_[key][stat])

    def get(side: dict[str, Any], *keys: str) -> float | None:
        v: Any = side
        for k in keys:
            if not isinstance(v, dict) or k not in v:
                return None
            v = v[k]
        return None if v is None else float(v)

    rows: list[tuple[str, float | None, float | None, str, str]] = []
    for key, label in (
        ("running_s", "submit -> RUNNING, client polling"),
        ("own_running_s", "submit -> RUNNING, the system's own record (Slurm: whole s)"),
        ("first_line_s", "submit -> the job's first line"),
    ):
        for stat in ("median", "p90"):
            goal = f"{GOALS['first_line_s'] * 1000:.0f} ms" if key == "first_line_s" and stat == "median" else ""
            rows.append((f"{label}, {stat}", lat(S, key, stat), lat(C, key, stat), "ms", goal))
    rows.append(
        (
            "RUNNING (client sees it) -> first line, median",
            lat(S, "running_to_first_line_s", "median"),
            lat(C, "running_to_first_line_s", "median"),
            "ms",
            "",
        )
    )
    rows.append(
        (
            "RUNNING (own record) -> first line, median",
            None,
            lat(C, "own_running_to_first_line_s", "median"),
            "ms",
            "",
        )
    )
    rows.append(
        (
            "one CLI submission, wall, median (sbatch; corral submit)",
            get(S, "cli_one", "wall_s", "median"),
            get(C, "cli_one", "wall_s", "median"),
            "ms",
            f"{GOALS['cli_wall_s'] * 1000:.0f} ms",
        )
    )
    rows.append(
        (
            "one CLI submission, CPU (user+sys), median",
            get(S, "cli_one", "cpu_s", "median"),
            get(C, "cli_one", "cpu_s", "median"),
            "ms",
            "",
        )
    )
    rows.append(
        (
            f"submissions/s, {args.submissions} from {args.threads} threads (sbatch; HTTP API)",
            get(S, "submit_per_s"),
            get(C, "submit_per_s"),
            "/s",
            "",
        )
    )
    rows.append(
        (
            f"submissions/s through the CLI, {args.threads} threads "
            f"(sbatch x{args.submissions}; corral submit x{int(C.get('cli_submissions', args.cli_submissions))})",
            get(S, "cli_per_s"),
            get(C, "cli_per_s"),
            "/s",
            f"{GOALS['cli_per_s']:.0f}/s",
        )
    )
    rows.append(
        (
            f"cancel {args.cancel} queued jobs",
            get(S, "cancel", "seconds"),
            get(C, "cancel", "seconds"),
            "s",
            f"{GOALS['cancel_s']:.0f} s",
        )
    )
    title = f"Slurm ({version or 'n/a'}) vs corral, same sleeper job, one node, {os.cpu_count()} cores"
    table = Table(title=title)
    for col in ("measure", "Slurm", "corral", "corral/Slurm", "corral goal"):
        table.add_column(col)
    for label, s, c, unit, goal in rows:
        table.add_row(label, fmt(s, unit), fmt(c, unit), ratio(s, c), goal)
    console.print(table)
    console.print("corral/Slurm: below 1 is corral faster for times, above 1 is corral faster for rates.")
    if slurm_why:
        console.print(f"[yellow]Slurm: n/a ({slurm_why})[/]")
    console.print(f"Slurm cancel: {S.get('cancel', {}).get('path', 'n/a')}")
    console.print(f"corral cancel path: {C.get('cancel', {}).get('path')}")
    for note in C.get("cancel", {}).get("notes", []):
        console.print(f"  [yellow]{note}[/]")
    console.print(
        f"load average (1 min) {load_start[0]:.2f} at the start, {load_end[0]:.2f} at the end; "
        f"full run {time.time() - started:.0f} s"
    )
    result = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "command": "python " + " ".join(["benchmarks/vs_slurm.py", *sys.argv[1:]]),
        "cpus": os.cpu_count(),
        "load_average_start": load_start,
        "load_average_end": load_end,
        "wall_s": time.time() - started,
        "slurm_version": version,
        "slurm_unavailable": slurm_why,
        "params": vars(args),
        "goals": GOALS,
        "table": [
            {"measure": label, "unit": unit, "slurm": s, "corral": c, "corral_over_slurm": ratio(s, c), "goal": goal}
            for label, s, c, unit, goal in rows
        ],
        "slurm": S,
        "corral": C,
    }
    out = ROOT / "benchmarks" / "results" / "vs_slurm.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
