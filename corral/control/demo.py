"""`corral demo`: a live service on this machine, a mixed workload of real training jobs, and a report.

The demo starts the service in this process (temporary home and database),
submits the jobs of examples/demo/ through the HTTP API, shows them live until
they all end, then prints a summary and writes a report folder (summary.md,
summary.json, a device Gantt chart, loss curves, each job's log).

What it shows: an elastic job that starts alone and takes every idle device,
then shrinks to its request when the other jobs arrive (a resize: it
checkpoints and resumes at the new world size; the workload is ordered so that
this happens in every run, and the demo's check fails when it does not); DDP
on 2 devices, a 1-device job, a job that crashes once and is restarted from its
checkpoint, and a long low-priority job that a later high-priority job
preempts; the low-priority job resumes from its checkpoint and finishes.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from corral.control import report
from corral.control.report import JobRecord
from corral.control.server import ServerThread, check_port
from corral.control.service import Service, ServiceConfig
from corral.control.spec import JobSpec, load_spec
from corral.control.states import HOLDING, STATE_STYLE, TERMINAL, JobState
from corral.errors import UserError

ROOT = Path(__file__).resolve().parents[2]  # the source checkout: examples/ lives here
DEMO_DIR = ROOT / "examples" / "demo"
MIN_DEVICES = 2  # the elastic job needs room to resize
MAX_DEVICES = 64
API = "/api/v1"
TICK = 0.5  # seconds between refreshes of the live table
GRACE = 10.0  # seconds a stopped run has to checkpoint before it is killed


@dataclass(frozen=True)
class DemoJob:
    """One job of the workload: its spec file, the shorter command of --quick, and what it must end with."""

    file: str
    quick: str  # entrypoint under --quick
    restarts: int = 0  # restarts it must end with
    preempted: bool = False  # it must be preempted at least once and resume from its checkpoint
    resized: bool = False  # it must be resized at least once and resume from its checkpoint
    first: bool = False  # submitted alone, before the others (which arrive once it runs)
    urgent: bool = False  # held back, then submitted to take devices from the low-priority job


WORKLOAD: tuple[DemoJob, ...] = (
    # The elastic job comes alone: it starts on every device. The jobs after it
    # take the devices it holds above its request, so it shrinks (a resize).
    DemoJob("elastic.yaml", "python examples/digits.py --epochs 10 --checkpoint-every 25", resized=True, first=True),
    DemoJob("digits-ddp.yaml", "python examples/digits.py --epochs 4"),
    DemoJob("linreg.yaml", "python examples/linear_regression.py --epochs 5"),
    DemoJob("fail-once.yaml", "python examples/demo/fail_once.py --epochs 4 --crash-after 2", restarts=1),
    DemoJob(
        "lowprio-long.yaml", "python examples/digits.py --epochs 25 --lr 0.02 --checkpoint-every 25", preempted=True
    ),
    DemoJob("urgent.yaml", "python examples/digits.py --epochs 4", urgent=True),
)
# The urgent job arrives at least this long after the start, once the
# low-priority job runs and has logged an epoch (so its resume is visible).
URGENT_AFTER = {False: 15.0, True: 4.0}
# The other jobs come once the elastic job runs on the idle devices and has
# logged an epoch (a SIGTERM then is a clean checkpoint), or after this long.
OTHERS_WAIT = {False: 120.0, True: 60.0}
DEADLINE = {False: 900.0, True: 300.0}  # the whole demo; past it every job is cancelled


class _Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C."""


def run_demo(devices: int = 4, report_dir: Path | None = None, port: int = 0, quick: bool = False) -> int:
    """Run the demo; return the exit code (0: every job ended as expected, 1: not, 130: interrupted)."""
    if not MIN_DEVICES <= devices <= MAX_DEVICES:
        raise UserError(
            f"--devices must be between {MIN_DEVICES} and {MAX_DEVICES} (the elastic job needs "
            f"2 to resize), got {devices}"
        )
    if port:
        check_port("127.0.0.1", port)
    out = _report_dir(report_dir)
    workload = load_workload(devices, quick)
    # Piped (CI, a test): wide enough for the tables, which a terminal gets from its own width.
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
    home = Path(tempfile.mkdtemp(prefix="corral-demo-"))
    demo = _Demo(console, home, devices, port, quick, workload, out)
    with _sigterm_as_interrupt():
        try:
            return demo.run()
        except KeyboardInterrupt as exc:
            demo.interrupt()
            return 143 if isinstance(exc, _Terminated) else 130
        finally:
            demo.close()
            shutil.rmtree(home, ignore_errors=True)


def _report_dir(report_dir: Path | None) -> Path:
    """The report folder, created now so that a bad path fails before anything starts."""
    out = Path(report_dir) if report_dir is not None else Path.cwd() / "corral-demo-report"
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".corral-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"cannot create the report folder {out}: {exc.strerror or exc}") from None
    return out


def load_workload(devices: int, quick: bool) -> list[tuple[DemoJob, JobSpec]]:
    """The demo's job specs, sized for `devices` slots, run from the source checkout."""
    if not (DEMO_DIR.is_dir() and (ROOT / "examples" / "digits.py").is_file()):
        raise UserError(f"the demo runs the examples of a corral source checkout; {DEMO_DIR} not found")
    jobs = []
    for dj in WORKLOAD:
        spec = load_spec(DEMO_DIR / dj.file)
        res = spec.resources
        lo, hi = min(res.min_gpus or 1, devices), min(res.max_gpus or 1, devices)
        gpus = min(res.gpus or 1, hi)
        update: dict[str, Any] = {
            "workdir": str(ROOT),
            "env": {**spec.env, "OMP_NUM_THREADS": "1"},
            "resources": {"gpus": gpus, "min_gpus": lo, "max_gpus": hi},
        }
        if quick:
            update["entrypoint"] = dj.quick
        jobs.append((dj, JobSpec.model_validate({**spec.model_dump(mode="json"), **update})))
    return jobs


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises _Terminated (cleanup runs as for Ctrl-C); main thread only."""

    def handler(signum: int, frame: Any) -> None:
        raise _Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Demo:
    """The state of one demo run: the service, the client, what was submitted and seen."""

    def __init__(
        self,
        console: Console,
        home: Path,
        devices: int,
        port: int,
        quick: bool,
        workload: list[tuple[DemoJob, JobSpec]],
        out: Path,
    ) -> None:
        self.console, self.home, self.devices, self.port, self.quick = console, home, devices, port, quick
        self.workload, self.out = workload, out
        self.t0 = time.time()
        self.service: Service | None = None
        self.server: ServerThread | None = None
        self.client: httpx.Client | None = None
        self.demo_job: dict[int, DemoJob] = {}
        self.jobs: dict[int, dict[str, Any]] = {}
        self.metrics: dict[int, tuple[list[dict[str, Any]], str]] = {}
        self.events: dict[int, list[dict[str, Any]]] = {}
        self.polled: dict[int, list[tuple[float, tuple[str, ...]]]] = {}
        self.others_submitted = False
        self.urgent_submitted = False
        self._seen: dict[int, tuple[Any, ...]] = {}

    # -- the run -------------------------------------------------------------------

    def run(self) -> int:
        self.t0 = time.time()
        self.service = Service(
            ServiceConfig(home=self.home, devices=self.devices, policy="priority", round_seconds=1, grace=GRACE)
        )
        self.service.ensure_admin()
        token = (self.home / "admin-token").read_text().strip()
        self.server = ServerThread(self.service, port=self.port).start()
        url = self.server.url
        self.client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        c = self.console
        c.rule("[bold]corral demo")
        c.print(f"A corral service with {self.devices} device slots (policy: priority) runs in this process.")
        c.print(f"  dashboard: [link={url}/?token={token}]{url}/?token={token}[/link]")
        c.print(f"  API docs:  {url}/docs      (both live while the demo runs; Ctrl-C stops it cleanly)")
        c.print(f"  workload:  {DEMO_DIR.relative_to(ROOT)}/*.yaml" + (" (--quick variant)" if self.quick else ""))
        c.print()
        for dj, spec in self.workload:
            if dj.first:
                self._submit(dj, spec)
        timed_out = self._watch()
        if timed_out:
            c.print(
                f"[bold red]the demo did not finish within {DEADLINE[self.quick]:.0f} s; cancelling what is left[/]"
            )
            self._stop_all()
        return self._finish(timed_out)

    def _submit(self, dj: DemoJob, spec: JobSpec) -> None:
        assert self.client is not None
        r = self.client.post(f"{API}/jobs", json=spec.model_dump(mode="json"))
        if r.status_code != 201:
            raise UserError(f"{DEMO_DIR / dj.file}: the service refused it: {_detail(r)}")
        job = r.json()
        self.demo_job[job["id"]] = dj
        self.jobs[job["id"]] = job

    def _watch(self) -> bool:
        """Refresh the live table until every job ended; True when the deadline passed first."""
        deadline = self.t0 + DEADLINE[self.quick]
        with Live(self._render(), console=self.console, refresh_per_second=4, transient=False) as live:
            while True:
                self._poll()
                if not self.others_submitted and self._others_due():
                    for dj, spec in self.workload:
                        if not (dj.first or dj.urgent):
                            self._submit(dj, spec)
                    self.others_submitted = True
                    self._poll()
                if self.others_submitted and not self.urgent_submitted and self._urgent_due():
                    dj, spec = next((d, s) for d, s in self.workload if d.urgent)
                    self._submit(dj, self._sized_to_preempt(spec))
                    self.urgent_submitted = True
                    self._poll()
                live.update(self._render())
                if self.urgent_submitted and all(j["state"] in TERMINAL for j in self.jobs.values()):
                    return False
                if time.time() > deadline:
                    return True
                time.sleep(TICK)

    def _others_due(self) -> bool:
        """Time for the other jobs: the elastic job runs on more devices than it asked for and has logged a loss
        in this run, so that they take devices from it (or it ended, or waited too long: the check will say)."""
        if time.time() - self.t0 > OTHERS_WAIT[self.quick]:
            return True
        first = [j for j in self.jobs.values() if self.demo_job[j["id"]].first]
        if any(j["state"] in TERMINAL for j in first):
            return True
        return all(len(j["devices"]) > j["gpus"] and self._training(j) for j in first)

    def _urgent_due(self) -> bool:
        """Time for the urgent job: the low-priority job runs and has logged a loss in this run (or has ended)."""
        if time.time() - self.t0 < URGENT_AFTER[self.quick]:
            return False
        low = next((j for j in self.jobs.values() if self.demo_job[j["id"]].preempted), None)
        if low is None or low["state"] in TERMINAL:
            return True
        return self._training(low)

    def _training(self, job: dict[str, Any]) -> bool:
        """The job runs and has logged a loss in this run.

        Then its training loop runs (a SIGTERM now is a clean checkpoint, not a kill during start-up),
        and the report can show the step it resumes from.
        """
        if job["state"] != JobState.RUNNING.value:
            return False
        starts = [e["time"] for e in self.events.get(job["id"], []) if e["dst"] == JobState.RUNNING.value]
        since = max(starts, default=0.0)
        recs = self.metrics.get(job["id"], ([], ""))[0]
        key = report.loss_key(recs)
        return any(r["time"] >= since and key in r["values"] for r in recs) if key else False

    def _sized_to_preempt(self, spec: JobSpec) -> JobSpec:
        """The urgent job, grown if needed to one device more than are free, so that it must preempt."""
        # Devices an elastic job holds above its request count as free: a waiting job takes them first.
        held = sum(
            min(len(j["devices"]), j["gpus"]) if j["min_gpus"] < j["max_gpus"] else len(j["devices"])
            for j in self.jobs.values()
            if j["state"] in HOLDING
        )
        need = self.devices - held + 1  # at most free + the low-priority job's devices: it alone is preempted
        if need <= (spec.resources.gpus or 1) or need > self.devices:
            return spec
        self.console.print(
            f"[dim]{spec.name} asks for {need} devices instead of {spec.resources.gpus}: "
            f"{need - 1} are free on this {self.devices}-device cluster[/]"
        )
        return spec.model_copy(
            update={"resources": spec.resources.model_copy(update={"gpus": need, "min_gpus": need, "max_gpus": need})}
        )

    def _poll(self) -> None:
        """Read jobs, new events and metrics; print each new event; note the devices of running jobs."""
        assert self.client is not None
        now = time.time()
        ended_before = {i for i, j in self.jobs.items() if j["state"] in TERMINAL and i in self.events}
        for job in self.client.get(f"{API}/jobs", params={"limit": 1000}).json()["jobs"]:
            if job["id"] not in self.demo_job:
                continue
            self.jobs[job["id"]] = job
            if job["state"] in HOLDING and job["devices"]:
                self.polled.setdefault(job["id"], []).append((now, tuple(job["devices"])))
        new: list[tuple[float, int, dict[str, Any]]] = []
        for jid, job in sorted(self.jobs.items()):
            if jid in ended_before:
                continue  # nothing changes after the end
            # Events only when the job moved (every transition changes one of these): few requests per tick.
            seen = (job["state"], job["attempt"], job["restarts"], job["preemptions"], job.get("resizes"))
            if self._seen.get(jid) != seen:
                events = self._events(jid)
                new += [(ev["time"], jid, ev) for ev in events[len(self.events.get(jid, [])) :]]
                self.events[jid] = events
                self._seen[jid] = seen
            if job["state"] != JobState.PENDING.value or jid not in self.metrics:
                self.metrics[jid] = self._metrics(jid)
        for _, jid, ev in sorted(new, key=lambda e: (e[0], e[1])):
            self._print_event(jid, ev)

    def _events(self, jid: int) -> list[dict[str, Any]]:
        """The job's events with their structured data (the allocation of every start), from the store.

        Read in-process: the API's events carry time, states and cause, not the data the report needs.
        """
        assert self.service is not None
        return [
            {"time": e.time, "src": e.src, "dst": e.dst, "cause": e.cause, "data": e.data or {}}
            for e in self.service.store.events(jid)
        ]

    def _metrics(self, jid: int) -> tuple[list[dict[str, Any]], str]:
        """The job's metrics from the API, completed from the metrics.jsonl in its checkpoint folder."""
        assert self.client is not None and self.service is not None
        api = self.client.get(f"{API}/jobs/{jid}/metrics").json()["metrics"]
        file = report.read_metrics_file(Path(self.service.executor.checkpoint_location(jid)) / "metrics.jsonl")
        return report.merge_metrics(api, file)

    def _print_event(self, jid: int, ev: dict[str, Any]) -> None:
        job = self.jobs[jid]
        arrow = f"{ev['src']} → {ev['dst']}" if ev["src"] else ev["dst"]
        style = STATE_STYLE.get(ev["dst"], "")
        self.console.print(
            Text.assemble(
                f"{ev['time'] - self.t0:6.1f} s  ",
                (f"#{jid} {job['name']:<13}", "bold"),
                " ",
                (f"{arrow:<22}", style),
                " ",
                ev["cause"],
            )
        )

    # -- the live table ----------------------------------------------------------------

    def _render(self) -> Group:
        elapsed = time.time() - self.t0
        busy = sum(len(j["devices"]) for j in self.jobs.values() if j["state"] in HOLDING)
        t = Table(
            title=f"corral demo · {elapsed:4.0f} s · {busy}/{self.devices} devices busy · policy priority",
            title_justify="left",
            caption=_ABBREVIATIONS,
            caption_justify="left",
            **_TABLE_STYLE,
        )
        for name, justify, width in (
            ("id", "right", 2),
            ("job", "left", 12),
            ("prio", "right", 4),
            ("state", "left", 10),
            ("reason", "left", 0),
            ("devices", "left", 0),
            ("step · progress", "right", 0),
            ("rst", "right", 3),
            ("pre", "right", 3),
            ("rsz", "right", 3),
            ("loss", "right", 0),
            ("acc", "right", 0),
        ):
            t.add_column(name, justify=justify, min_width=width or None)  # type: ignore[arg-type]
        for jid in sorted(self.jobs):
            job = self.jobs[jid]
            recs = self.metrics.get(jid, ([], ""))[0]
            lk, ak = report.loss_key(recs), report.accuracy_key(recs)
            loss, acc = report.latest(recs, lk), report.latest(recs, ak)
            step = max([job.get("step") or 0, *(r["step"] for r in recs)])
            t.add_row(
                str(jid),
                job["name"],
                str(job["priority"]),
                Text(job["state"], STATE_STYLE.get(job["state"], "")),
                job["reason"] or "",
                _short_devices(job["devices"]),
                _progress(job, step, recs),
                str(job["restarts"]),
                str(job["preemptions"]),
                str(job.get("resizes", 0)),
                f"{loss:.3g}" if loss is not None else "-",
                f"{acc:.3f}" if acc is not None else "-",
            )
        waiting = (
            []
            if self.urgent_submitted
            else [
                Text(
                    "  the other jobs are held back until the elastic job runs on the idle devices"
                    if not self.others_submitted
                    else "  the urgent job (priority 10) is held back until the low-priority job runs",
                    style="dim",
                )
            ]
        )
        return Group(t, *waiting)

    # -- the end -----------------------------------------------------------------------

    def _finish(self, timed_out: bool) -> int:
        """Print the summary, write the report; 0 when every job ended as expected."""
        now = time.time()
        self._poll()
        for jid in self.jobs:  # the last reports of a run may arrive after it ended
            self.metrics[jid] = self._metrics(jid)
        records = [
            JobRecord(
                job=self.jobs[j],
                events=self.events.get(j, []),
                metrics=self.metrics.get(j, ([], ""))[0],
                metrics_source=self.metrics.get(j, ([], "api"))[1],
                polled_devices=self.polled.get(j, []),
            )
            for j in sorted(self.jobs)
        ]
        rows, checks = [], []
        for rec in records:
            row = report.job_row(rec, report.intervals(rec, now), self.t0)
            expected, ok = self._expect(self.demo_job[rec.job["id"]], row)
            row.update(expected=expected, ok=ok)
            rows.append(row)
            checks.append((f"#{row['id']} {row['name']}: expected {expected}; got {_got(row)}", ok))
        if not self.urgent_submitted or len(rows) < len(self.workload):
            checks.append(("every job of the workload was submitted", False))
        checks.append(resize_check([r for r in rows if self.demo_job[r["id"]].resized]))
        notes = [
            f"{r['name']} ran at sizes {' → '.join(map(str, r['sizes']))} ({r['resizes']} resizes)"
            for r in rows
            if "-" in r["requested"]
        ]
        ok = all(ok for _, ok in checks) and not timed_out
        wall = now - self.t0
        meta = {
            "title": "corral demo" + (" (quick)" if self.quick else ""),
            "result": "every job ended as expected" if ok else "some jobs did not end as expected",
            "wall time": f"{wall:.1f} s",
            "devices": self.devices,
            "policy": "priority",
            "quick": self.quick,
            "allocations": "from each job's events (every start records its allocation); "
            "devices polled every 0.5 s as a fallback",
            "metrics": ", ".join(sorted({r["metrics_source"] for r in rows})),
            "notes": notes
            + [
                "metrics: 'api' = GET /jobs/{id}/metrics; 'metrics.jsonl' = the file job.log() writes "
                "in the job's checkpoint folder, read for the records the API lacks",
                "logs/: each job's output, all runs, every rank prefixed",
            ],
            "checks": checks,
        }
        self._print_summary(rows, checks, wall)
        paths = report.write_report(
            self.out, records, rows, [f"local:{i}" for i in range(self.devices)], self.t0, now, meta
        )
        self._copy_logs()
        self.console.print(f"\nreport: {self.out}/ (" + ", ".join(p.name for p in paths) + ", logs/)")
        self.console.print(f"[bold {'green' if ok else 'red'}]{meta['result']}[/] in {wall:.0f} s")
        return 0 if ok else 1

    @staticmethod
    def _expect(dj: DemoJob, row: dict[str, Any]) -> tuple[str, bool]:
        """What the job must end with, in words, and whether it did."""
        text, ok = JobState.SUCCEEDED.value, row["state"] == JobState.SUCCEEDED.value
        if dj.restarts:
            text += f" after {dj.restarts} restart{'s' if dj.restarts > 1 else ''}"
            ok = ok and row["restarts"] == dj.restarts
        if dj.preempted:
            text += ", preempted and resumed from its checkpoint"
            ok = ok and row["preemptions"] >= 1 and row["resumed"] is True
        if dj.resized:
            text += ", resized and resumed from its checkpoint"
            ok = ok and row["resizes"] >= 1 and row["resumed"] is True
        return text, ok

    def _print_summary(self, rows: list[dict[str, Any]], checks: list[tuple[str, bool]], wall: float) -> None:
        t = Table(
            title=f"summary: {len(rows)} jobs in {wall:.0f} s",
            title_justify="left",
            caption="times in seconds (JCT = end - submit; wait = JCT - run); " + _ABBREVIATIONS,
            caption_justify="left",
            **_TABLE_STYLE,
        )
        keys = [k for k, _ in report.SUMMARY_COLUMNS if k in _SHORT]
        for key in keys:
            t.add_column(
                _SHORT[key], justify="left" if key in _LEFT else "right", min_width={"name": 12, "state": 9}.get(key)
            )
        t.add_column("ok")
        for row in rows:
            cells = dict(zip([k for k, _ in report.SUMMARY_COLUMNS], report.row_cells(row)))
            cells["state"] = f"[{STATE_STYLE.get(row['state'], '')}]{cells['state']}[/]"
            cells["result"] = cells["result"].replace("test_acc", "acc")
            t.add_row(*[cells[k] for k in keys], "[green]yes[/]" if row["ok"] else "[bold red]NO[/]")
        self.console.print()
        self.console.print(t)
        for text, ok in checks:
            if not ok:
                self.console.print(f"[bold red]FAIL[/] {text}")
        for row in rows:
            for p in row["resumes"]:
                what = "continued from its checkpoint" if p["continued"] else "[red]started over[/]"
                self.console.print(
                    f"  {row['name']} run {p['run']} (after it was {p['after']}): first step logged "
                    f"{p['first_step_after']}, last before {p['last_step_before']}: {what}"
                )

    def _copy_logs(self) -> None:
        if self.service is None:
            return
        logs = self.out / "logs"
        logs.mkdir(exist_ok=True)
        for jid, job in self.jobs.items():
            text = self.service.executor.read_log(jid, None, 0, 1 << 30)
            if text:
                (logs / f"{jid}-{job['name']}.log").write_bytes(text)

    # -- stopping ----------------------------------------------------------------------

    def interrupt(self) -> None:
        """Ctrl-C: cancel every job and wait for the runs to stop (a second Ctrl-C kills them)."""
        self.console.print(
            "\n[bold]interrupted[/]: cancelling the jobs and waiting for their runs to stop "
            "(Ctrl-C again to kill them now)"
        )
        try:
            self._stop_all()
        except KeyboardInterrupt:
            self.console.print("killing the runs")
            self._kill_all()
        self.console.print("stopped: no run of the demo is left (no report was written)")

    def _stop_all(self) -> None:
        """Cancel every job that has not ended; wait until its run stopped (SIGKILL after the grace period)."""
        svc = self.service
        if svc is None:
            return
        for jid, job in self.jobs.items():
            if job["state"] not in TERMINAL:
                with contextlib.suppress(Exception):
                    svc.cancel(jid)
        deadline = time.monotonic() + GRACE + 10
        while svc.executor.running() and time.monotonic() < deadline:
            time.sleep(0.2)  # the scheduler loop reaps the runs and records the cancellations
        if svc.executor.running():
            self._kill_all()

    def _kill_all(self) -> None:
        """SIGKILL every run of the executor with all its processes (the workers live in sessions of their own)."""
        if self.service is None:
            return
        for pid in self.service.executor.pids():  # type: ignore[attr-defined]  # the demo runs the local executor
            _kill_tree(pid)

    def close(self) -> None:
        """Stop the server and the loop; make sure no process of the demo is left."""
        try:
            if self.service is not None and self.service.executor.running():
                self._stop_all()
        finally:
            if self.client is not None:
                self.client.close()
            if self.server is not None:
                self.server.stop()
            if self.service is not None:
                self._kill_all()


def resize_check(rows: list[dict[str, Any]]) -> tuple[str, bool]:
    """The demo's own check that it showed an elastic resize: (what it found, in words; whether it passed)."""
    ok = any(r["resizes"] >= 1 for r in rows)
    found = (
        "; ".join(
            f"{r['name']} ran at sizes {' → '.join(map(str, r['sizes'])) or '-'} ({_plural(r['resizes'], 'resize')})"
            for r in rows
        )
        or "no elastic job ran"
    )
    return (
        f"at least one elastic resize: {found}"
        if ok
        else f"no elastic resize happened ({found}); the demo must show one",
        ok,
    )


def _kill_tree(pid: int) -> None:
    """SIGKILL a process and every descendant it has."""
    try:
        root = psutil.Process(pid)
        procs = [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            p.kill()
    psutil.wait_procs(procs, timeout=5)


# Console headers (summary.md has the long ones): the tables fit a 100-column terminal.
_SHORT = {
    "id": "id",
    "name": "job",
    "priority": "prio",
    "state": "state",
    "jct": "JCT",
    "queue_time": "wait",
    "run_time": "run",
    "preemptions": "pre",
    "restarts": "rst",
    "resizes": "rsz",
    "sizes_text": "sizes",
    "result": "final metric",
}
_TABLE_STYLE: dict[str, Any] = {
    "box": box.SIMPLE_HEAD,
    "padding": (0, 1),
    "collapse_padding": True,
    "pad_edge": False,
    "show_edge": False,
}
_LEFT = ("name", "state", "result", "sizes_text")
_ABBREVIATIONS = "rst: restarts, pre: preemptions, rsz: resizes"


def _detail(r: httpx.Response) -> str:
    try:
        return str(r.json().get("detail", r.text))
    except ValueError:
        return r.text.strip() or f"HTTP {r.status_code}"


def _short_devices(devices: list[str]) -> str:
    """'0,1' for local:0,local:1 (one node), the full names otherwise."""
    nodes = {d.rpartition(":")[0] for d in devices}
    if len(nodes) == 1:
        return ",".join(d.rpartition(":")[2] for d in devices)
    return ",".join(devices) or "-"


def _progress(job: dict[str, Any], step: int, recs: list[dict[str, Any]]) -> str:
    """'345 · 60%': the step and the fraction done (the API's, else the epoch the job last logged)."""
    if job["state"] == JobState.SUCCEEDED.value:
        done = "100%"
    elif job.get("progress") is not None:
        done = f"{job['progress']:.0%}"
    else:
        epochs = [r["values"]["epoch"] for r in recs if "epoch" in r["values"]]
        done = f"ep {int(epochs[-1]) + 1}" if epochs else ""
    return " · ".join(x for x in (str(step) if step else "", done) if x) or "-"


def _got(row: dict[str, Any]) -> str:
    parts = [
        row["state"],
        _plural(row["restarts"], "restart"),
        _plural(row["preemptions"], "preemption"),
        _plural(row["resizes"], "resize"),
    ]
    if row["resumed"] is not None:
        parts.append("resumed" if row["resumed"] else "started over")
    return ", ".join(parts)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")
