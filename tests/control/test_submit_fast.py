"""`corral submit FILE` on its fast path: nothing heavy imported, the same request and the same lines as the
full command, over http and https; whatever it does not take goes to the full command before anything is sent.

The server here is a tiny stdlib HTTP server that records each request and answers what the test says, so
the test sees exactly what the CLI sent and what it imported (sys.modules in the CLI's own process).
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT

HEAVY = ("torch", "httpx", "rich", "pydantic", "fastapi", "typer", "click", "sqlalchemy", "uvicorn")
# Runs `corral submit ARGS` as the console script does, then writes which heavy modules it imported.
PROBE = (
    "import json, os, sys\n"
    "from corral.cli import main\n"
    "code = main()\n"
    f"heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)\n"
    "open(os.environ['PROBE_OUT'], 'w').write(json.dumps(heavy))\n"
    "sys.exit(code)\n"
)


@dataclass
class Api:
    """What the tiny server answers, and the requests it got: (method, path, headers, body)."""

    url: str = ""
    status: int = 201
    answer: dict[str, Any] = field(default_factory=lambda: {"id": 7, "name": "hello", "state": "PENDING"})
    requests: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)


@contextmanager
def tiny_api(context: ssl.SSLContext | None = None) -> Iterator[Api]:
    api = Api()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            api.requests.append(("POST", self.path, dict(self.headers), body))
            payload = json.dumps(api.answer).encode()
            self.send_response(api.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    api.url = f"{'https' if context else 'http'}://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield api
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Ran:
    code: int
    out: str
    err: str
    heavy: list[str]


def submit(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> Ran:
    """`corral submit ARGS` in a fresh interpreter (cwd: tmp_path), with the heavy modules it imported."""
    probe = tmp_path / "probe.json"
    probe.unlink(missing_ok=True)
    base = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    base.update(PYTHONPATH=str(ROOT), PROBE_OUT=str(probe), CORRAL_HOME=str(tmp_path / "home"), **(env or {}))
    r = subprocess.run(
        [sys.executable, "-c", PROBE, "submit", *args], cwd=tmp_path, env=base, capture_output=True, text=True
    )
    return Ran(r.returncode, r.stdout, r.stderr, json.loads(probe.read_text()) if probe.exists() else ["?"])


@pytest.fixture
def job(tmp_path: Path) -> Path:
    (tmp_path / "train.py").write_text("print('hi')\n")
    path = tmp_path / "jobs" / "job.yaml"
    path.parent.mkdir()
    path.write_text(
        "name: hello\nentrypoint: python train.py --lr 0.1\nworkdir: ..\nresources: {gpus: 2}\n"
        "env: {OMP_NUM_THREADS: '1'}\npriority: 5\n"
    )
    return path


def test_submit_imports_nothing_heavy_and_sends_the_spec(tmp_path: Path, job: Path) -> None:
    with tiny_api() as api:
        r = submit(tmp_path, str(job), "--server", api.url, "--token", "tok")
    assert (r.code, r.out, r.err) == (0, "submitted job 7 (hello)\n", "")
    assert r.heavy == []
    [(method, path, headers, body)] = api.requests
    assert (method, path, headers["Authorization"]) == ("POST", "/api/v1/jobs", "Bearer tok")
    assert json.loads(body) == {
        "name": "hello",
        "entrypoint": "python train.py --lr 0.1",
        "workdir": str(tmp_path.resolve()),  # relative to the job file's folder, made absolute
        "resources": {"gpus": 2},
        "env": {"OMP_NUM_THREADS": "1"},
        "priority": 5,
    }


def test_server_and_token_come_from_the_environment_and_the_token_file(tmp_path: Path, job: Path) -> None:
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "token").write_text("from-file\n")
    with tiny_api() as api:
        assert submit(tmp_path, str(job), env={"CORRAL_SERVER": api.url}).code == 0
        assert submit(tmp_path, str(job), env={"CORRAL_SERVER": api.url, "CORRAL_TOKEN": "from-env"}).code == 0
    assert [h["Authorization"] for _, _, h, _ in api.requests] == ["Bearer from-file", "Bearer from-env"]


def test_refusals_are_the_servers_one_line(tmp_path: Path, job: Path) -> None:
    with tiny_api() as api:
        for status, detail, line in [
            (403, "alice may queue at most 2 jobs", "error: alice may queue at most 2 jobs"),
            (401, "invalid token", f"error: invalid token for {api.url}: check --token, CORRAL_TOKEN or "),
            (500, "boom", f"error: the corral server at {api.url} failed (500): boom"),
        ]:
            api.status, api.answer = status, {"detail": detail}
            r = submit(tmp_path, str(job), "--server", api.url, "--token", "t")
            assert r.code == 2 and r.out == "" and r.err.startswith(line) and r.err.count("\n") == 1, r.err
            assert r.heavy == []  # answered on the fast path


def test_what_it_does_not_take_goes_to_the_full_command_before_anything_is_sent(tmp_path: Path, job: Path) -> None:
    (tmp_path / "unknown.yaml").write_text("name: x\nentrypoint: python train.py\nbogus: 1\n")
    (tmp_path / "missing.yaml").write_text("name: x\nentrypoint: python nothere.py\n")
    with tiny_api() as api:
        r = submit(tmp_path, "unknown.yaml", "--server", api.url, "--token", "t")
        assert r.code == 2 and r.err == "error: unknown.yaml: bogus: unknown field\n", r.err
        assert "pydantic" in r.heavy  # the full command said it
        r = submit(tmp_path, "missing.yaml", "--server", api.url, "--token", "t")
        assert r.code == 2 and r.err.startswith("error: missing.yaml: entrypoint: script not found: "), r.err
        r = submit(tmp_path, "nothere.yaml", "--server", api.url, "--token", "t")
        assert (r.code, r.err) == (2, "error: job file not found: nothere.yaml\n")
        r = submit(tmp_path, str(job), "--server", "http://127.0.0.1:bad", "--token", "t")
        assert r.code == 2 and "--server: 'http://127.0.0.1:bad' has a port that is not an integer" in r.err
        r = submit(tmp_path, str(job), "--server", api.url, "--token", "t\u00f6ken")
        assert r.code == 2 and "--token: the token holds non-ASCII characters" in r.err
        assert api.requests == []
        r = submit(tmp_path, "--help")
        assert r.code == 0 and "--wait" in r.out and "--ca-cert" in r.out


def test_a_server_that_is_down_is_the_usual_line(tmp_path: Path, job: Path) -> None:
    from corral.control.server import free_port

    url = f"http://127.0.0.1:{free_port()}"
    r = submit(tmp_path, str(job), "--server", url, "--token", "t")
    assert r.code == 2 and r.err.startswith(f"error: cannot reach the corral server at {url}: start it"), r.err


def test_https_with_the_ca_from_the_option_or_the_environment(tmp_path: Path, job: Path) -> None:
    from tests.control.test_security import make_certs

    certs = make_certs(tmp_path / "certs")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certs["signed"].cert, certs["signed"].key)
    with tiny_api(context) as api:
        r = submit(tmp_path, str(job), "--server", api.url, "--token", "t", "--ca-cert", str(certs["ca"].cert))
        assert (r.code, r.out, r.heavy) == (0, "submitted job 7 (hello)\n", []), r.err
        r = submit(tmp_path, str(job), env={"CORRAL_SERVER": api.url, "CORRAL_TOKEN": "t",
                                            "CORRAL_CA_CERT": str(certs["ca"].cert)})  # fmt: skip
        assert (r.code, r.heavy) == (0, []), r.err
        assert len(api.requests) == 2
        # Not trusted: the client's line, naming the certificate problem and --ca-cert.
        r = submit(tmp_path, str(job), "--server", api.url, "--token", "t", "--ca-cert", str(certs["otherca"].cert))
        assert r.code == 2 and f"cannot connect securely to the corral server at {api.url}" in r.err, r.err
        assert "--ca-cert" in r.err and r.err.count("\n") == 1
        r = submit(tmp_path, str(job), "--server", api.url, "--token", "t", "--ca-cert", str(tmp_path / "none.pem"))
        assert r.code == 2 and "--ca-cert" in r.err and "is not a file" in r.err, r.err
        assert len(api.requests) == 2


def test_arrays_and_dependencies_take_the_fast_path_too(tmp_path: Path, job: Path) -> None:
    job.write_text(job.read_text() + "array: '0-3'\ndepends_on: [3, 1]\nafter: any\n")
    with tiny_api() as api:
        api.answer = {"id": 7, "name": "hello", "array_size": 4}
        r = submit(tmp_path, str(job), "--server", api.url, "--token", "t")
    assert (r.code, r.out, r.heavy) == (0, "submitted array 7: jobs 7..10 (hello, 4 jobs)\n", []), r.err
    sent = json.loads(api.requests[0][3])
    assert (sent["array"], sent["depends_on"], sent["after"]) == ("0-3", [3, 1], "any")
