"""Metrics reporting to the service: what a job started by the service posts, and that a bad service never hurts it."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import corral
from corral.runtime.report import Reporter
from tests.conftest import WORKERS, run_corral

TOKEN = "job-token-123"


class Service:
    """A stand-in for the corral service's metrics route on 127.0.0.1: records each POST, answers `status`."""

    def __init__(self, status: int = 204, hang: bool = False) -> None:
        self.status = status
        self.hang = hang
        self.posts: list[dict] = []  # {"path", "auth", "body", "at"}
        self.release = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.posts.append(
                    {
                        "path": self.path,
                        "auth": self.headers.get("Authorization"),
                        "body": json.loads(body),
                        "at": time.monotonic(),
                    }
                )
                if outer.hang:
                    outer.release.wait(30)
                    return
                payload = b"" if outer.status == 204 else json.dumps({"detail": "invalid token"}).encode()
                self.send_response(outer.status)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def records(self) -> list[dict]:
        return [r for p in self.posts for r in p["body"]["records"]]

    def stop(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def service() -> Iterator[Service]:
    s = Service()
    yield s
    s.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(url: str, job_id: str = "7") -> dict[str, str]:
    return {"CORRAL_SERVER": url, "CORRAL_JOB_ID": job_id, "CORRAL_JOB_TOKEN": TOKEN}


# -- the reporter alone ------------------------------------------------------------------


def test_reporter_batches_and_never_blocks_the_caller(service: Service) -> None:
    reporter = Reporter(service.url, "7", TOKEN)
    t0 = time.perf_counter()
    for step in range(500):
        reporter.report(step, {"loss": 1.0 / (step + 1), "bad": float("nan")})
    assert time.perf_counter() - t0 < 0.5  # appending only; the thread does the posting
    assert reporter.flush()
    reporter.close()
    assert [r["step"] for r in service.records()] == list(range(500))
    assert all(set(r["values"]) == {"loss"} for r in service.records())  # NaN is not JSON: left out
    assert len(service.posts) <= 3  # batched, not one request per record
    assert {p["path"] for p in service.posts} == {"/api/v1/jobs/7/metrics"}
    assert {p["auth"] for p in service.posts} == {f"Bearer {TOKEN}"}


def test_reporter_sends_at_most_one_request_per_half_second(service: Service) -> None:
    reporter = Reporter(service.url, "7", TOKEN)
    end = time.monotonic() + 2.0
    step = 0
    while time.monotonic() < end:
        reporter.report(step, {"x": 1.0})
        step += 1
        time.sleep(0.01)
    reporter.close()
    gaps = [b["at"] - a["at"] for a, b in zip(service.posts, service.posts[1:])]
    assert len(service.posts) >= 3
    assert min(gaps[:-1]) > 0.4  # the last one may be the final flush
    assert [r["step"] for r in service.records()] == list(range(step))


def test_hanging_service_bounds_the_flush(capsys) -> None:
    hung = Service(hang=True)
    try:
        reporter = Reporter(hung.url, "7", TOKEN, timeout=5.0)  # a request outlasts the flush
        reporter.report(1, {"loss": 1.0})
        t0 = time.perf_counter()
        assert not reporter.flush(timeout=1.0)
        reporter.report(2, {"loss": 1.0})  # still does not block
        reporter.close(timeout=0.3)
        assert time.perf_counter() - t0 < 2.0
    finally:
        hung.stop()
    assert capsys.readouterr().err.count("[corral] metrics") <= 1


def test_no_service_means_no_reporter(monkeypatch) -> None:
    for name in ("CORRAL_SERVER", "CORRAL_JOB_ID", "CORRAL_JOB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    assert Reporter.from_env() is None
    monkeypatch.setenv("CORRAL_SERVER", "http://127.0.0.1:1")
    assert Reporter.from_env() is None  # no job id or token: nothing to report as


# -- a job in this process (world size 1) ---------------------------------------------------


@pytest.fixture
def _single_process(monkeypatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "CORRAL_CHECKPOINT_DIR"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("_single_process")
def test_job_reports_logs_and_progress_in_process(service: Service, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("corral.runtime.throughput.REPORT_PERIOD_S", 0.0)  # a throughput report after every step
    for k, v in _env(service.url).items():
        monkeypatch.setenv(k, v)
    job = corral.init(checkpoint_dir=tmp_path)
    x = torch.randn(32, 4)
    net = nn.Linear(4, 1)
    net, opt, loader = job.prepare(
        net, torch.optim.SGD(net.parameters(), lr=0.01), TensorDataset(x, x.sum(1)), batch_size=8, shuffle=False
    )
    for epoch in job.epochs(2):
        for xb, yb in loader:
            job.step(((net(xb).squeeze(-1) - yb) ** 2).mean())
        job.log(loss=float(epoch))
    job.finish()
    records = service.records()
    progress = [r["values"]["progress"] for r in records if "progress" in r["values"]]
    # 4 steps per epoch, reported after each: 1/8, 2/8, ... of the 2 epochs, then 1.0.
    assert progress == [i / 8 for i in range(1, 9)]
    logged = [(r["step"], r["values"]) for r in records if "loss" in r["values"]]
    assert logged == [(4, {"loss": 0.0, "epoch": 0.0}), (8, {"loss": 1.0, "epoch": 1.0})]
    assert all(r["values"]["samples_per_s"] > 0 for r in records if "step_time" in r["values"])


@pytest.mark.usefixtures("_single_process")
def test_preempted_job_sends_what_it_queued_before_exiting(service: Service, tmp_path: Path, monkeypatch) -> None:
    for k, v in _env(service.url).items():
        monkeypatch.setenv(k, v)
    job = corral.init(checkpoint_dir=tmp_path)
    x = torch.randn(64, 4)
    net = nn.Linear(4, 1)
    net, opt, loader = job.prepare(
        net, torch.optim.SGD(net.parameters(), lr=0.01), TensorDataset(x, x.sum(1)), batch_size=8
    )
    with pytest.raises(SystemExit) as stopped:
        for _ in job.epochs(2):
            for xb, yb in loader:
                job.step(((net(xb).squeeze(-1) - yb) ** 2).mean())
                if job.step_count == 3:
                    job.log(loss=0.5)
                    signal.raise_signal(signal.SIGTERM)  # preemption: the job stops after its next step
    assert stopped.value.code == corral.PREEMPTED_EXIT_CODE
    records = service.records()
    assert [(r["step"], r["values"]) for r in records if "loss" in r["values"]] == [(3, {"loss": 0.5, "epoch": 0.0})]
    assert records[-1]["step"] == 4 and records[-1]["values"]["progress"] == pytest.approx(4 / 16)


# -- a real job under `corral run` ----------------------------------------------------------


def _run_reporting(tmp_path: Path, env: dict[str, str], *extra: str) -> tuple[str, float, float]:
    """Run workers/reporting.py on 2 workers; (output, loop seconds, finish seconds) of rank 0."""
    result = run_corral(
        "run",
        "--nproc",
        "2",
        str(WORKERS / "reporting.py"),
        "--checkpoint-dir",
        str(tmp_path / "ckpt"),
        *extra,
        env=env,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    line = next(ln for ln in out.splitlines() if "loop_s=" in ln)
    loop_s, finish_s = (float(part.split("=")[1]) for part in line.split("]", 1)[1].split())
    return out, loop_s, finish_s


@pytest.mark.slow
def test_job_under_corral_run_reports_to_the_service(service: Service, tmp_path: Path) -> None:
    # 4 epochs of 8 steps at >= 0.1 s each: over 3 s, so periodic throughput reports go out too.
    _run_reporting(tmp_path, _env(service.url), "--epochs", "4", "--sleep", "0.1")
    assert service.posts
    assert {p["auth"] for p in service.posts} == {f"Bearer {TOKEN}"}
    assert {p["path"] for p in service.posts} == {"/api/v1/jobs/7/metrics"}
    records = service.records()
    steps = [r["step"] for r in records]
    assert steps == sorted(steps) and steps[-1] == 32

    # Every job.log record, once (rank 0 only), with the values metrics.jsonl holds.
    jsonl = [json.loads(line) for line in (tmp_path / "ckpt" / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if "loss" in r["values"]]
    assert [(r["step"], r["values"]["epoch"], r["values"]["loss"], r["time"]) for r in logged] == [
        (j["step"], j["epoch"], j["loss"], j["time"]) for j in jsonl
    ]
    assert len(logged) == 4

    timing = [r["values"] for r in records if "step_time" in r["values"]]
    assert len(timing) >= 2  # at least one every ~2 s of training, and the final one
    for v in timing:
        assert v["step_time"] >= 0.1
        # samples/s counts both workers: 2 x batch 8 = 16 samples per optimizer step.
        assert v["samples_per_s"] * v["step_time"] == pytest.approx(16.0)
    progress = [r["values"]["progress"] for r in records if "progress" in r["values"]]
    assert progress == sorted(progress) and 0 < progress[0] < 1 and progress[-1] == 1.0


@pytest.mark.slow
def test_a_refusing_service_neither_fails_nor_slows_the_job(tmp_path: Path) -> None:
    refusing = Service(status=401)
    try:
        out, loop_s, finish_s = _run_reporting(tmp_path, _env(refusing.url), "--epochs", "3", "--sleep", "0.05")
    finally:
        refusing.stop()
    assert len(refusing.posts) == 1  # refused once: reporting stops
    warnings = [line for line in out.splitlines() if "[corral] metrics" in line]
    assert len(warnings) == 1 and "401" in warnings[0] and "invalid token" in warnings[0], out
    assert finish_s < 3.0
    assert loop_s < 24 * 0.05 + 4.0  # 24 steps; waiting on the service would add seconds


@pytest.mark.usefixtures("_single_process")
@pytest.mark.parametrize("kind", ["down", "hangs"])
def test_an_unreachable_service_neither_fails_nor_slows_the_job(kind: str, tmp_path: Path, monkeypatch, capfd) -> None:
    hung = Service(hang=True)
    url = hung.url if kind == "hangs" else f"http://127.0.0.1:{_free_port()}"
    monkeypatch.setattr("corral.runtime.throughput.REPORT_PERIOD_S", 0.0)  # a report after every step
    for k, v in _env(url).items():
        monkeypatch.setenv(k, v)
    try:
        job = corral.init(checkpoint_dir=tmp_path)
        x = torch.randn(64, 4)
        net = nn.Linear(4, 1)
        net, opt, loader = job.prepare(
            net, torch.optim.SGD(net.parameters(), lr=0.01), TensorDataset(x, x.sum(1)), batch_size=8
        )
        t0 = time.perf_counter()
        for _ in job.epochs(3):
            for xb, yb in loader:
                job.step(((net(xb).squeeze(-1) - yb) ** 2).mean())
                time.sleep(0.05)
            job.log(loss=1.0)
        loop_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        job.finish()
        finish_s = time.perf_counter() - t1
    finally:
        hung.stop()
    # 24 steps of 0.05 s: a request per step, each waiting 2 s (hangs) or failing, would show here.
    assert loop_s < 24 * 0.05 + 1.0
    assert finish_s < 3.0  # the final flush gives up after about 2 s
    assert capfd.readouterr().err.count("[corral] metrics") == 1  # said once, not per request
