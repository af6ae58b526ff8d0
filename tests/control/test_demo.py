"""`corral demo`: the quick workload end to end (real service, real jobs), its report, bad input and Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from corral.control import report
from corral.control.demo import WORKLOAD, _Demo, resize_check, run_demo
from corral.control.report import JobRecord
from corral.errors import UserError
from tests.conftest import corral_cmd, run_corral

JOBS = {"digits-ddp", "linreg", "fail-once", "elastic", "lowprio-long", "urgent"}


def _demo_cmd(report: Path) -> list[str]:
    return corral_cmd("demo", "--quick", "--report-dir", str(report))


def _env(tmp_path: Path) -> dict[str, str]:
    # The demo's temporary home goes under tmp_path, so the test can tell its processes from anyone else's.
    tmp = tmp_path / "tmp"
    tmp.mkdir(exist_ok=True)
    return dict(os.environ, OMP_NUM_THREADS="1", TMPDIR=str(tmp), COLUMNS="200")


def _processes_under(path: Path) -> list[str]:
    """Command lines of live processes that mention `path` (the demo's runs and workers do)."""
    found = []
    for p in psutil.process_iter(["cmdline", "environ"]):
        try:
            env = p.info["environ"] or {}
            text = " ".join(p.info["cmdline"] or []) + " " + " ".join(f"{k}={v}" for k, v in env.items())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if str(path) in text and p.pid != os.getpid():
            found.append(" ".join(p.info["cmdline"] or []))
    return found


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_quick_demo_runs_the_workload_and_writes_the_report(tmp_path: Path) -> None:
    report = tmp_path / "report"
    proc = subprocess.run(
        _demo_cmd(report), capture_output=True, text=True, timeout=840, cwd=tmp_path, env=_env(tmp_path)
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "/?token=" in proc.stdout and "/docs" in proc.stdout

    # The printed summary lists every job with its final state.
    summary_lines = proc.stdout[proc.stdout.index("summary:") :].splitlines()
    for name in JOBS:
        assert any(name in line and "SUCCEEDED" in line for line in summary_lines), (name, out[-4000:])

    summary = json.loads((report / "summary.json").read_text())
    rows = {r["name"]: r for r in summary["jobs"]}
    assert set(rows) == JOBS
    assert all(r["state"] == "SUCCEEDED" and r["ok"] for r in rows.values()), rows
    assert all(r["jct"] > 0 and r["run_time"] > 0 and r["queue_time"] >= 0 for r in rows.values())
    assert rows["fail-once"]["restarts"] == 1 and rows["fail-once"]["runs"] == 2
    assert rows["digits-ddp"]["sizes"] == [2] and rows["urgent"]["priority"] == 10
    low = rows["lowprio-long"]
    assert low["preemptions"] >= 1 and low["resumed"] is True
    # The elastic job came first, took every idle device and shrank when the others arrived: a resize, every run.
    elastic = rows["elastic"]
    assert elastic["resizes"] >= 1 and elastic["resumed"] is True, elastic
    assert elastic["sizes"][0] == 4 and elastic["sizes"][1] < 4, elastic
    assert elastic["submit"] < min(r["submit"] for name, r in rows.items() if name != "elastic")

    # Resumed, from the raw events and metrics: after the preemption (the resize), training went on from its step.
    data = json.loads((report / "data.json").read_text())
    for name, kind in (("lowprio-long", "preemption"), ("elastic", "resize")):
        rec = next(r for r in data["records"] if r["job"]["name"] == name)
        events = rec["events"]
        # In event order, not by time: a job requeued and restarted in one round has both events at one instant.
        at = next(i for i, e in enumerate(events) if e["dst"] == "PREEMPTED" and e["data"].get("kind") == kind)
        stopped = events[at]["time"]
        resumed = next(e for e in events[at:] if e["dst"] == "RUNNING")
        assert resumed["data"]["attempt"] >= 2 and resumed["data"]["allocation"], resumed
        losses = [m for m in rec["metrics"] if "loss" in m["values"]]
        before = [m["step"] for m in losses if m["time"] <= stopped]
        after = [m["step"] for m in losses if m["time"] > resumed["time"]]
        assert before and after and after[0] > max(before), (name, before, after)
        assert "resumed from step" in (report / "logs" / f"{rec['job']['id']}-{name}.log").read_text()

    for png in ("gantt.png", "loss.png"):
        blob = (report / png).read_bytes()
        assert blob.startswith(b"\x89PNG") and len(blob) > 20_000, png
    md = (report / "summary.md").read_text()
    assert all(name in md for name in JOBS) and "gantt.png" in md
    assert "at least one elastic resize: elastic ran at sizes 4 → " in md
    assert not _processes_under(tmp_path), _processes_under(tmp_path)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ctrl_c_cancels_the_runs_and_leaves_no_process(tmp_path: Path) -> None:
    report = tmp_path / "report"
    proc = subprocess.Popen(
        _demo_cmd(report), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path, env=_env(tmp_path)
    )
    assert proc.stdout is not None
    lines = []
    try:
        for line in proc.stdout:  # wait until jobs run
            lines.append(line)
            if "→ RUNNING" in line:
                break
        time.sleep(3)
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = "".join(lines) + rest
    assert proc.returncode == 130, out[-4000:]
    assert "interrupted" in out and "Traceback" not in out
    assert not _processes_under(tmp_path), _processes_under(tmp_path)


def test_bad_input_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"between 2 and 64 \(the elastic job needs 2 to resize\), got 0"):
        run_demo(devices=0)
    with pytest.raises(UserError, match="--devices must be between 2 and 64 .*, got 1"):
        run_demo(devices=1)  # no room for the elastic job to resize
    with pytest.raises(UserError, match="--devices must be between 2 and 64 .*, got 65"):
        run_demo(devices=65)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(UserError, match="cannot create the report folder"):
        run_demo(report_dir=blocker / "report")


def test_cli_refuses_bad_devices() -> None:
    r = run_corral("demo", "--devices", "0", timeout=60)
    assert r.returncode == 2 and r.stderr.strip().startswith("error:") and "Traceback" not in r.stderr


def test_the_check_fails_without_a_resize() -> None:
    """The demo's own check: the elastic job must be resized (and resume), else the demo exits 1 saying so."""
    elastic = next(dj for dj in WORKLOAD if dj.resized)
    assert elastic.first and elastic.file == "elastic.yaml"  # submitted alone, so it takes the idle devices
    row = {
        "name": "elastic",
        "state": "SUCCEEDED",
        "restarts": 0,
        "preemptions": 0,
        "resizes": 0,
        "sizes": [1],
        "resumed": None,
    }
    text, ok = resize_check([row])
    assert not ok and text == "no elastic resize happened (elastic ran at sizes 1 (0 resizes)); the demo must show one"
    assert _Demo._expect(elastic, row)[1] is False
    assert resize_check([]) == ("no elastic resize happened (no elastic job ran); the demo must show one", False)
    row.update(resizes=1, sizes=[4, 1], resumed=True)
    assert resize_check([row]) == ("at least one elastic resize: elastic ran at sizes 4 → 1 (1 resize)", True)
    assert _Demo._expect(elastic, row) == ("SUCCEEDED, resized and resumed from its checkpoint", True)


def _job(jid: int, name: str, **kw: object) -> dict:
    job = {
        "id": jid,
        "name": name,
        "priority": 0,
        "gpus": 2,
        "min_gpus": 2,
        "max_gpus": 2,
        "state": "SUCCEEDED",
        "submit_time": 100.0,
        "start_time": 101.0,
        "end_time": 140.0,
        "queue_time": 1.0,
        "run_time": 30.0,
        "preemptions": 0,
        "restarts": 0,
        "resizes": 0,
        "step": 0,
        "devices": [],
        "exit_code": 0,
    }
    job.update(kw)
    return job


def _ev(t: float, src: str, dst: str, cause: str = "", alloc: dict[str, list[int]] | None = None) -> dict:
    return {"time": t, "src": src, "dst": dst, "cause": cause, "data": {"allocation": alloc} if alloc else {}}


def _m(t: float, step: int, **values: float) -> dict:
    return {"time": t, "step": step, "values": values}


def test_report_from_events_and_metrics(tmp_path: Path) -> None:
    """Runs and devices come from the events' data; a preempted job that resumed is told from one that started over."""
    resumed = JobRecord(
        job=_job(1, "low", preemptions=1),
        events=[
            _ev(100, "", "PENDING", "submitted"),
            _ev(101, "PENDING", "RUNNING", "scheduled by priority on local:0,local:1", {"local": [0, 1]}),
            _ev(110, "RUNNING", "PREEMPTED", "preempted by priority (exit code 75)"),
            _ev(110, "PREEMPTED", "PENDING", "requeued"),
            _ev(120, "PENDING", "RUNNING", "scheduled by priority on local:2,local:3", {"local": [2, 3]}),
            _ev(140, "RUNNING", "SUCCEEDED", "exit code 0"),
        ],
        metrics=[
            _m(105, 20, loss=2.0, test_acc=0.5),
            _m(109, 40, loss=1.0, test_acc=0.7),
            _m(125, 60, loss=0.5, test_acc=0.9),
        ],
    )
    crashed = JobRecord(
        job=_job(2, "flaky", gpus=1, min_gpus=1, max_gpus=1, restarts=1, submit_time=100.0),
        events=[
            _ev(100, "", "PENDING", "submitted"),
            _ev(101, "PENDING", "RUNNING", "scheduled by priority on local:2", {"local": [2]}),
            _ev(105, "RUNNING", "RESTARTING", "exit code 1; restart 1/1"),
            _ev(105, "RESTARTING", "RUNNING", "restarted on local:2", {"local": [2]}),
            _ev(109, "RUNNING", "SUCCEEDED", "exit code 0"),
        ],
        metrics=[_m(104, 30, mse=1.0), _m(108, 10, mse=0.9)],
    )  # the second run began again at step 0
    runs = report.intervals(resumed, now=150)
    assert [(r.start, r.end, r.devices, r.outcome) for r in runs] == [
        (101, 110, ("local:0", "local:1"), "preempted"),
        (120, 140, ("local:2", "local:3"), "done"),
    ]
    assert [r.outcome for r in report.intervals(crashed, now=150)] == ["crashed", "done"]

    rows = [report.job_row(r, report.intervals(r, 150), t0=100) for r in (resumed, crashed)]
    assert rows[0]["resumed"] is True and rows[0]["sizes"] == [2, 2] and rows[0]["final_accuracy"] == 0.9
    assert rows[0]["jct"] == 40 and rows[0]["queue_time"] == 10  # JCT - running
    assert rows[1]["resumed"] is False and rows[1]["loss_metric"] == "mse" and rows[1]["final_loss"] == 0.9

    paths = report.write_report(
        tmp_path,
        [resumed, crashed],
        rows,
        ["local:0", "local:1", "local:2", "local:3"],
        t0=100,
        now=150,
        meta={"title": "test", "checks": [("low resumed", True)]},
    )
    assert {p.name for p in paths} == {"gantt.png", "loss.png", "summary.md", "summary.json", "data.json"}
    for png in ("gantt.png", "loss.png"):
        assert (tmp_path / png).read_bytes().startswith(b"\x89PNG") and (tmp_path / png).stat().st_size > 20_000
    doc = json.loads((tmp_path / "summary.json").read_text())
    assert [j["name"] for j in doc["jobs"]] == ["low", "flaky"] and len(doc["runs"]) == 4
    assert "started over" in (tmp_path / "summary.md").read_text()


def test_allocations_come_from_event_data_not_cause_text() -> None:
    """The cause is display text: the devices are the allocation recorded with the start, else the polled ones."""
    rec = JobRecord(
        job=_job(3, "two-nodes", state="RUNNING", end_time=None),
        events=[
            _ev(100, "", "PENDING", "submitted"),
            _ev(101, "PENDING", "RUNNING", "scheduled on local:7", {"b": [1], "a": [0, 3]}),
            _ev(110, "RUNNING", "PREEMPTED", "preempted"),
            _ev(110, "PREEMPTED", "PENDING", "requeued"),
            _ev(120, "PENDING", "RUNNING", "scheduled on local:7"),
        ],  # no data: an older service
        metrics=[],
        polled_devices=[(119.0, ("x:9",)), (121.0, ("local:4", "local:5"))],
    )
    runs = report.intervals(rec, now=130)
    assert [r.devices for r in runs] == [("a:0", "a:3", "b:1"), ("local:4", "local:5")]
    assert [r.outcome for r in runs] == ["preempted", "running"]


def test_metrics_merge_adds_what_the_api_lacks(tmp_path: Path) -> None:
    f = tmp_path / "metrics.jsonl"
    f.write_text(
        '{"step": 10, "epoch": 0, "time": 5.0, "loss": 1.5}\n{"step": 20, "epoch": 1, "time": 6.0, "loss": 1.0}\n{"st'
    )
    file = report.read_metrics_file(f)  # a line still being written is skipped
    assert [r["step"] for r in file] == [10, 20]
    api = [_m(5.0, 10, loss=1.5, epoch=0), _m(5.5, 15, step_time=0.1)]
    merged, source = report.merge_metrics(api, file)
    assert [r["step"] for r in merged] == [10, 15, 20] and source == "api+metrics.jsonl"
    assert report.merge_metrics([], file) == (file, "metrics.jsonl")
    assert report.merge_metrics(api[:1], file[:1]) == (api[:1], "api")
