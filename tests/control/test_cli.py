"""The corral CLI against a live service: every command with good and bad input, and real jobs end to end."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from sqlalchemy import func, select

from corral.cli import main
from corral.control.client import Client, resolve_server, resolve_token
from corral.control.server import free_port
from corral.control.store import Job, User
from corral.errors import UserError
from tests.conftest import ROOT, WORKERS, corral_cmd, run_corral
from tests.control.conftest import LiveServer

UNREACHABLE = "cannot reach the corral server at"


@dataclass
class Result:
    """What a CLI call printed and returned."""

    code: int
    out: str
    err: str


def refused(r: Result | subprocess.CompletedProcess[str], *fragments: str) -> str:
    """Assert exit code 2 with exactly one `error:` line on stderr containing `fragments`; return the line."""
    code = r.code if isinstance(r, Result) else r.returncode
    err = r.err if isinstance(r, Result) else r.stderr
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, err)
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


def write_spec(path: Path, **fields: object) -> Path:
    """A job file with a valid default spec updated by `fields`."""
    spec: dict[str, object] = {
        "name": "job",
        "entrypoint": f"python {WORKERS / 'sleeper.py'}",
        "resources": {"gpus": 1},
    }
    spec.update(fields)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec))
    return path


def count_jobs(live: LiveServer) -> int:
    return len(live.service.store.list_jobs(limit=100_000))


def count_users(live: LiveServer) -> int:
    with live.service.store.session() as s:
        return int(s.scalar(select(func.count()).select_from(User)) or 0)


def until(cond: Callable[[], object], timeout: float = 120, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def log_text(live: LiveServer, job_id: int, rank: int | None) -> str:
    """A job's whole output as the executor has it (every rank prefixed when rank is None)."""
    data, offset = b"", 0
    while chunk := live.service.executor.read_log(job_id, rank, offset):
        data += chunk
        offset += len(chunk)
    return data.decode(errors="replace")


def state(live: LiveServer, job_id: int) -> str:
    job = live.service.store.get_job(job_id)
    assert job is not None
    return job.state


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[..., Result]:
    """Run `corral ARGS` in this process with extra environment; no server or token unless given."""
    import corral.cli

    # main() registers every package's commands on each call, and typer rebuilds them all per call:
    # register once, or a test with many calls slows down quadratically.
    if not any(c.name == "server" for c in corral.cli.app.registered_commands):
        corral.cli._register()
    monkeypatch.setattr(corral.cli, "_register", lambda: None)
    for var in ("CORRAL_SERVER", "CORRAL_TOKEN", "CORRAL_DB", "CORRAL_CA_CERT", "COLUMNS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CORRAL_HOME", str(tmp_path / "cli-home"))
    capsys.readouterr()

    def run(*args: str, env: dict[str, str] | None = None) -> Result:
        with monkeypatch.context() as m:
            for k, v in (env or {}).items():
                m.setenv(k, v)
            code = main(list(args))
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return run


@pytest.fixture
def idle(make_server: Callable[..., LiveServer]) -> LiveServer:
    """A live API whose scheduler loop is stopped: submitted jobs stay PENDING and no process starts."""
    live = make_server()
    live.service.stop()
    return live


# -- without a server ----------------------------------------------------------------


def test_help_lists_every_command_and_imports_nothing_heavy() -> None:
    r = run_corral("--help")
    assert r.returncode == 0
    for cmd in ("server", "token", "submit", "jobs", "describe", "logs", "cancel", "cluster", "demo"):
        assert f" {cmd} " in r.stdout, cmd
    probe = (
        "import sys; from corral import cli; cli._register(); "
        "print([m for m in ('httpx', 'fastapi', 'uvicorn', 'torch', 'matplotlib', 'sqlalchemy') "
        "if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


def test_server_and_token_are_resolved_from_option_then_environment_then_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("CORRAL_SERVER", raising=False)
    monkeypatch.delenv("CORRAL_TOKEN", raising=False)
    monkeypatch.setenv("CORRAL_HOME", str(tmp_path))
    assert resolve_server() == "http://127.0.0.1:8765"
    monkeypatch.setenv("CORRAL_SERVER", "http://env:1/")
    assert resolve_server() == "http://env:1"
    assert resolve_server("http://opt:2") == "http://opt:2"
    with pytest.raises(UserError) as exc:
        resolve_token()
    msg = str(exc.value)
    assert "--token" in msg and "CORRAL_TOKEN" in msg and str(tmp_path / "token") in msg
    (tmp_path / "token").write_text("from-file\n")
    assert resolve_token() == "from-file"
    monkeypatch.setenv("CORRAL_TOKEN", "from-env")
    assert resolve_token() == "from-env"
    assert resolve_token("from-option") == "from-option"


@pytest.mark.parametrize(
    "args",
    [
        ["jobs"],
        ["describe", "1"],
        ["logs", "1"],
        ["logs", "1", "-f"],
        ["cancel", "1"],
        ["cluster"],
        ["token", "create", "bob"],
        ["submit", "JOB"],
    ],
)
def test_every_client_command_explains_an_unreachable_server(
    cli: Callable[..., Result], tmp_path: Path, args: list[str]
) -> None:
    job = write_spec(tmp_path / "job.yaml")
    args = [str(job) if a == "JOB" else a for a in args]
    url = f"http://127.0.0.1:{free_port()}"
    r = cli(*args, env={"CORRAL_SERVER": url, "CORRAL_TOKEN": "t"})
    refused(r, UNREACHABLE, url, "corral server", "CORRAL_SERVER")
    # --server wins over the environment.
    r = cli(*args, "--server", url, env={"CORRAL_SERVER": "http://127.0.0.1:1", "CORRAL_TOKEN": "t"})
    refused(r, UNREACHABLE, url)


def test_demo_refuses_a_bad_device_count(cli: Callable[..., Result]) -> None:
    refused(cli("demo", "--devices", "0"), "--devices")
    refused(cli("demo", "--devices", "-2"), "--devices")
    refused(cli("demo", "--port", "70000"), "--port")


# -- tokens and users ---------------------------------------------------------------------


def test_a_missing_or_wrong_token_is_refused_and_changes_nothing(
    idle: LiveServer, cli: Callable[..., Result], tmp_path: Path
) -> None:
    job = write_spec(tmp_path / "job.yaml")
    assert cli("submit", str(job), env=idle.env()).code == 0
    before = count_jobs(idle), count_users(idle)
    for args in (
        ["jobs"],
        ["describe", "1"],
        ["logs", "1"],
        ["logs", "1", "-f"],
        ["cancel", "1"],
        ["cluster"],
        ["token", "create", "bob"],
        ["submit", str(job)],
    ):
        r = cli(*args, env={"CORRAL_SERVER": idle.url})  # no token anywhere: refused before any request
        refused(r, "no token", "--token", "CORRAL_TOKEN", str(tmp_path / "cli-home" / "token"))
        refused(cli(*args, env=idle.env("not-a-token")), "invalid token")
        refused(cli(*args, "--token", "wrong", env=idle.env()), "invalid token")  # --token wins over CORRAL_TOKEN
    assert (count_jobs(idle), count_users(idle)) == before
    assert state(idle, 1) == "PENDING"


def test_token_from_the_home_file_is_used(idle: LiveServer, cli: Callable[..., Result], tmp_path: Path) -> None:
    home = tmp_path / "cli-home"
    home.mkdir()
    (home / "token").write_text(idle.user("carol") + "\n")
    r = cli("submit", str(write_spec(tmp_path / "job.yaml")), env={"CORRAL_SERVER": idle.url})
    assert r.code == 0
    assert idle.service.store.get_job(1).user == "carol"  # type: ignore[union-attr]


def test_admin_creates_tokens_and_others_may_not(idle: LiveServer, cli: Callable[..., Result]) -> None:
    r = cli("token", "create", "bob", env=idle.env())
    assert r.code == 0, r.err
    token = r.out.splitlines()[1].strip()
    assert "CORRAL_TOKEN=" + token in r.out
    with Client(idle.url, token) as client:
        assert client.whoami() == {"name": "bob", "admin": False}
    users = count_users(idle)
    refused(cli("token", "create", "mallory", "--admin", env=idle.env(token)), "only an admin may create tokens")
    refused(cli("token", "create", "bad name!", env=idle.env()), "name")
    assert count_users(idle) == users
    r = cli("token", "create", "root2", "--admin", env=idle.env())
    assert r.code == 0 and "admin root2" in r.out
    with Client(idle.url, r.out.splitlines()[1].strip()) as client:
        assert client.whoami()["admin"] is True


# -- submit ---------------------------------------------------------------------------


def test_submit_refuses_bad_files_before_anything_changes(
    idle: LiveServer, cli: Callable[..., Result], tmp_path: Path
) -> None:
    env = idle.env()
    bad_yaml = tmp_path / "broken.yaml"
    bad_yaml.write_text("name: x\nentrypoint: python a.py\nresources:\n  gpus: [1\n")
    not_mapping = tmp_path / "list.yaml"
    not_mapping.write_text("- 1\n- 2\n")
    cases = [
        (tmp_path / "missing.yaml", ["job file not found", "missing.yaml"]),
        (bad_yaml, ["broken.yaml line 5, column 1: not valid YAML"]),
        (not_mapping, ["list.yaml", "mapping"]),
        (write_spec(tmp_path / "unknown.yaml", colour="red"), ["unknown.yaml: colour: unknown field"]),
        (write_spec(tmp_path / "neg.yaml", resources={"gpus": -1}), ["neg.yaml: resources.gpus"]),
        (write_spec(tmp_path / "zero.yaml", resources={"gpus": 0}), ["zero.yaml: resources.gpus"]),
        (write_spec(tmp_path / "range.yaml", resources={"min_gpus": 3, "max_gpus": 2}), ["resources"]),
        (write_spec(tmp_path / "big.yaml", resources={"gpus": 3}), ["needs at least 3 devices", "cluster has 2"]),
        (write_spec(tmp_path / "noname.yaml", name="bad name"), ["noname.yaml: name"]),
        (write_spec(tmp_path / "noscript.yaml", entrypoint="python nope.py"), ["script not found", "nope.py"]),
        (write_spec(tmp_path / "nowd.yaml", workdir="no-such-dir"), ["workdir", "no-such-dir"]),
    ]
    for path, fragments in cases:
        refused(cli("submit", str(path), env=env), *fragments)
    refused(cli("submit", str(tmp_path / "big.yaml"), "--wait", env=env), "cluster has 2")
    assert count_jobs(idle) == 0
    # A bad file is refused before the server is contacted (none listens here).
    offline = {"CORRAL_SERVER": f"http://127.0.0.1:{free_port()}", "CORRAL_TOKEN": "t"}
    refused(cli("submit", str(bad_yaml), env=offline), "not valid YAML")


def test_submit_resolves_workdir_against_the_job_file_and_defaults_to_cwd(
    idle: LiveServer, cli: Callable[..., Result], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "train.py").write_text("print('hi')\n")
    job = write_spec(tmp_path / "jobs" / "job.yaml", name="rel", workdir="../code", entrypoint="python train.py")
    monkeypatch.chdir(ROOT)  # not where the job file is
    r = cli("submit", str(job), env=idle.env())
    assert r.code == 0 and r.out.strip() == "submitted job 1 (rel)"
    monkeypatch.chdir(tmp_path / "code")
    r = cli(
        "submit",
        str(write_spec(tmp_path / "jobs" / "cwd.yaml", name="cwd", entrypoint="python train.py")),
        env=idle.env(),
    )
    assert r.code == 0 and "submitted job 2 (cwd)" in r.out
    specs = {j.name: j.spec for j in idle.service.store.list_jobs()}
    assert specs["rel"]["workdir"] == str((tmp_path / "code").resolve())
    assert specs["cwd"]["workdir"] == str((tmp_path / "code").resolve())


# -- jobs, describe, logs, cancel, cluster on stored jobs ---------------------------------


def test_bad_ids_and_numbers_are_refused_with_one_line(
    idle: LiveServer, cli: Callable[..., Result], tmp_path: Path
) -> None:
    env = idle.env()
    assert cli("submit", str(write_spec(tmp_path / "job.yaml")), env=env).code == 0
    for cmd in ("describe", "logs", "cancel"):
        refused(cli(cmd, "-3", env=env), "job id must be a positive integer", "-3")
        refused(cli(cmd, "999", env=env), "no job with id 999")
    for bad in ("0", "abc", str(2**70)):
        refused(cli("describe", bad, env=env), "job id must be a positive integer", bad)
    refused(cli("logs", "1", "--rank", "-1", env=env), "--rank")
    refused(cli("logs", "1", "--rank", "5000", env=env), "--rank")
    refused(cli("jobs", "--limit", "0", env=env), "--limit")
    refused(cli("jobs", "--limit", "-5", env=env), "--limit")
    refused(cli("jobs", "--limit", "100000", env=env), "--limit")
    refused(cli("jobs", "--state", "sleeping", env=env), "unknown state", "PENDING")
    assert count_jobs(idle) == 1 and state(idle, 1) == "PENDING"


def test_another_users_job_may_be_described_but_not_cancelled_or_read(
    idle: LiveServer, cli: Callable[..., Result], tmp_path: Path
) -> None:
    alice, bob = idle.user("alice"), idle.user("bob")
    r = cli("submit", str(write_spec(tmp_path / "job.yaml", name="alices")), env=idle.env(alice))
    assert r.code == 0 and "submitted job 1 (alices)" in r.out
    refused(cli("cancel", "1", env=idle.env(bob)), "job 1 belongs to alice", "admin")
    refused(cli("logs", "1", env=idle.env(bob)), "job 1 belongs to alice")
    refused(cli("logs", "1", "--follow", env=idle.env(bob)), "job 1 belongs to alice")
    assert state(idle, 1) == "PENDING" and count_jobs(idle) == 1
    r = cli("describe", "1", env=idle.env(bob))
    assert r.code == 0 and "alices" in r.out and "alice" in r.out and "PENDING" in r.out
    assert "scheduler model" in r.out and "default model: no step times reported yet" in r.out  # nothing reported
    r = cli("logs", "1", env=idle.env(alice))  # the owner may; nothing written yet
    assert r.code == 0 and r.out == "" and "no output (PENDING)" in r.err
    r = cli("cancel", "1", env=idle.env(alice))
    assert r.code == 0 and "job 1 (alices): CANCELLED" in r.out
    refused(cli("cancel", "1", env=idle.env()), "already ended (CANCELLED)")


def test_describe_shows_spec_counters_and_events(idle: LiveServer, cli: Callable[..., Result], tmp_path: Path) -> None:
    job = write_spec(tmp_path / "job.yaml", name="described", priority=7, env={"LR": "0.1"})
    assert cli("submit", str(job), env=idle.env()).code == 0
    idle.service.store.add_metrics(1, 12, {"loss": 0.25, "progress": 0.5})
    r = cli("describe", "1", env=idle.env())
    assert r.code == 0, r.err
    for text in (
        "job 1",
        "described",
        "PENDING",
        "sleeper.py",
        "LR: '0.1'",
        "allocation none",
        "preemptions",
        "restarts",
        "resizes",
        "queue time",
        "- -> PENDING",
        "submitted",
        "step 12",
        "loss=0.25",
    ):
        assert text in r.out, text
    r = cli("describe", "1", "--json", env=idle.env())
    data = json.loads(r.out)
    assert data["id"] == 1 and data["state"] == "PENDING" and data["priority"] == 7
    assert [e["dst"] for e in data["events"]] == ["PENDING"]
    assert data["metrics"][0]["values"]["loss"] == 0.25 and data["progress"] == 0.5


def test_jobs_lists_live_and_recent_jobs_and_filters(
    idle: LiveServer, cli: Callable[..., Result], tmp_path: Path
) -> None:
    bob = idle.user("bob")
    for name in ("old", "recent", "waiting"):
        assert cli("submit", str(write_spec(tmp_path / f"{name}.yaml", name=name)), env=idle.env()).code == 0
    assert cli("submit", str(write_spec(tmp_path / "b.yaml", name="bobs")), env=idle.env(bob)).code == 0
    now = time.time()
    with idle.service.store.session() as s:
        old, recent, waiting = (s.get(Job, i) for i in (1, 2, 3))
        old.state, old.end_time = "SUCCEEDED", now - 7200  # type: ignore[union-attr]
        recent.state, recent.end_time = "FAILED", now - 600  # type: ignore[union-attr]
        waiting.step, waiting.progress = 120, 0.45  # type: ignore[union-attr]
    r = cli("jobs", env=idle.env())
    assert r.code == 0, r.err
    names = [line.split()[1] for line in r.out.splitlines()[1:]]
    assert names == ["bobs", "waiting", "recent"]  # newest first; not the one that ended 2 hours ago
    row = next(line for line in r.out.splitlines() if "waiting" in line)
    assert "PENDING" in row and "admin" in row and "step 120 (45%)" in row and "0/1" in row
    r = cli("jobs", "--all", env=idle.env())
    assert [line.split()[1] for line in r.out.splitlines()[1:]] == ["bobs", "waiting", "recent", "old"]
    r = cli("jobs", "--state", "succeeded", "--state", "FAILED", env=idle.env())
    assert [line.split()[1] for line in r.out.splitlines()[1:]] == ["recent", "old"]
    r = cli("jobs", "--user", "bob", env=idle.env())
    assert [line.split()[1] for line in r.out.splitlines()[1:]] == ["bobs"]
    r = cli("jobs", "--all", "--limit", "2", env=idle.env())
    assert [line.split()[1] for line in r.out.splitlines()[1:]] == ["bobs", "waiting"]
    r = cli("jobs", "--user", "nobody", env=idle.env())
    assert r.code == 0 and "no jobs" in r.out


def test_cluster_draws_devices_with_their_jobs(
    make_server: Callable[..., LiveServer], cli: Callable[..., Result], tmp_path: Path
) -> None:
    live = make_server(devices=4)
    live.service.stop()
    for name in ("alpha", "beta"):
        assert cli("submit", str(write_spec(tmp_path / f"{name}.yaml", name=name)), env=live.env()).code == 0
    with live.service.store.session() as s:  # as the scheduler would have placed them
        for job_id, devs in ((1, [0, 1]), (2, [3])):
            job = s.get(Job, job_id)
            job.state, job.allocation = "RUNNING", {"local": devs}  # type: ignore[union-attr]
    r = cli("cluster", env=live.env())
    assert r.code == 0, r.err
    grid = next(line for line in r.out.splitlines() if line.startswith("local"))
    assert grid.split()[2:] == ["1", "1", "free", "2"]
    assert any(line.split()[:4] == ["1", "alpha", "admin", "2"] for line in r.out.splitlines())
    assert any(line.split()[:4] == ["2", "beta", "admin", "1"] for line in r.out.splitlines())
    assert "3/4 devices in use, 2 jobs running, 0 pending; policy priority" in r.out


# -- real jobs ------------------------------------------------------------------------------


@pytest.fixture
def running(make_server: Callable[..., LiveServer]) -> LiveServer:
    """A live service that runs jobs: 2 device slots."""
    return make_server(devices=2, policy="fifo", grace=5)


@pytest.mark.slow
def test_a_real_job_end_to_end(running: LiveServer, tmp_path: Path) -> None:
    env = running.env()
    job = write_spec(
        tmp_path / "allreduce.yaml",
        name="allreduce",
        workdir=str(ROOT),
        entrypoint="python tests/runtime/workers/torchrun_style.py",
        resources={"gpus": 2},
    )
    r = run_corral("submit", str(job), "--wait", env=env)
    assert r.returncode == 0, r.stderr
    assert "submitted job 1 (allreduce)" in r.stdout and "job 1 (allreduce) SUCCEEDED" in r.stdout

    r = run_corral("jobs", env=env)
    row = next(line for line in r.stdout.splitlines() if "allreduce" in line)
    assert row.split()[:4] == ["1", "allreduce", "admin", "SUCCEEDED"]

    r = run_corral("describe", "1", env=env)
    assert r.returncode == 0, r.stderr
    marks = [r.stdout.index(t) for t in ("- -> PENDING", "PENDING -> RUNNING", "RUNNING -> SUCCEEDED")]
    assert marks == sorted(marks)
    assert "local:0, local:1" in r.stdout
    data = json.loads(run_corral("describe", "1", "--json", env=env).stdout)
    assert [e["dst"] for e in data["events"]] == ["PENDING", "RUNNING", "SUCCEEDED"]
    assert data["exit_code"] == 0 and data["devices"] == ["local:0", "local:1"]

    r = run_corral("logs", "1", env=env)
    assert r.returncode == 0
    assert "[rank 0] sum=3 rank=0" in r.stdout and "[rank 1] sum=3 rank=1" in r.stdout
    assert r.stdout == log_text(running, 1, None)
    r = run_corral("logs", "1", "--rank", "0", env=env)
    assert "sum=3 rank=0 local=0" in r.stdout and "rank=1" not in r.stdout


GATED_PRINTER = """
import sys, time
from pathlib import Path
gate = Path(sys.argv[1])
for i in range(50):
    print(f"before {i}", flush=True)
deadline = time.time() + 120
while not gate.exists() and time.time() < deadline:
    time.sleep(0.05)
for i in range(400):
    print(f"after {i} " + "x" * (i % 97), flush=True)
    if i % 50 == 0:
        time.sleep(0.05)
"""


@pytest.mark.slow
def test_following_a_running_job_prints_every_line(running: LiveServer, tmp_path: Path) -> None:
    env = running.env()
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "printer.py").write_text(GATED_PRINTER)
    gate = tmp_path / "gate"
    job = write_spec(
        tmp_path / "jobs" / "printer.yaml", name="printer", workdir="../code", entrypoint=f"python printer.py {gate}"
    )
    r = run_corral("submit", str(job), env=env)
    assert r.returncode == 0 and "submitted job 1 (printer)" in r.stdout, r.stderr
    until(lambda: "before 49" in log_text(running, 1, 0), what="the job's first lines")
    assert state(running, 1) == "RUNNING"
    full_env = dict(os.environ, **env)
    # Read the rest from the same buffered stream readline() used (communicate() would read the raw pipe).
    errs = [tmp_path / f"follower-{i}.err" for i in range(2)]
    followers = [
        subprocess.Popen(
            corral_cmd("logs", "1", *extra),
            stdout=subprocess.PIPE,
            stderr=err.open("w"),
            text=True,
            env=full_env,
            cwd=ROOT,
        )
        for extra, err in zip((["-f"], ["--follow", "--rank", "0"]), errs)
    ]
    try:
        # Each follower prints its first line while the job still waits at the gate.
        firsts = [p.stdout.readline() for p in followers]  # type: ignore[union-attr]
        assert state(running, 1) == "RUNNING"
        gate.touch()
        rests = [p.stdout.read() for p in followers]  # type: ignore[union-attr]
        for p in followers:
            p.wait(timeout=60)
    finally:
        for p in followers:
            p.kill()
    assert [p.returncode for p in followers] == [0, 0], [e.read_text() for e in errs]
    assert state(running, 1) == "SUCCEEDED"
    every_rank, rank_0 = (first + rest for first, rest in zip(firsts, rests))
    assert every_rank == log_text(running, 1, None)
    assert rank_0 == log_text(running, 1, 0)
    assert rank_0.count("\n") == 450 and "after 399 " in rank_0


@pytest.mark.slow
def test_cancel_a_running_job_and_wait_on_a_failing_one(running: LiveServer, tmp_path: Path) -> None:
    env = running.env()
    (tmp_path / "fail.py").write_text("import sys\nprint('failing', flush=True)\nsys.exit(3)\n")
    fail = write_spec(tmp_path / "fail.yaml", name="doomed", workdir=".", entrypoint="python fail.py")
    sleeper = write_spec(
        tmp_path / "sleep.yaml", name="sleepy", workdir=str(ROOT), entrypoint="python tests/runtime/workers/sleeper.py"
    )
    r = run_corral("submit", str(sleeper), env=env)
    assert r.returncode == 0 and "submitted job 1 (sleepy)" in r.stdout, r.stderr
    waiter = subprocess.Popen(
        corral_cmd("submit", str(fail), "--wait"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, **env),
        cwd=ROOT,
    )
    try:
        until(lambda: "up 0" in log_text(running, 1, 0), what="the sleeper to start")
        r = run_corral("cluster", env=env)
        assert r.returncode == 0 and "sleepy" in r.stdout and "policy fifo" in r.stdout
        r = run_corral("cancel", "1", env=env)
        assert r.returncode == 0, r.stderr
        assert "job 1 (sleepy): " in r.stdout and ("cancelling" in r.stdout or "CANCELLED" in r.stdout)
        until(lambda: state(running, 1) == "CANCELLED", timeout=60, what="the cancel")
        r = run_corral("describe", "1", env=env)
        assert "RUNNING -> CANCELLED" in r.stdout and "cancelled by user" in r.stdout
        refused(run_corral("cancel", "1", env=env), "already ended (CANCELLED)")
        out, err = waiter.communicate(timeout=180)
    finally:
        waiter.kill()
    assert waiter.returncode == 1, err
    assert "submitted job 2 (doomed)" in out and "job 2 (doomed) FAILED" in out and "exit code 3" in out


# -- corral server ---------------------------------------------------------------------------


@pytest.mark.slow
def test_server_command_serves_until_sigterm(tmp_path: Path) -> None:
    port, home = free_port(), tmp_path / "home"
    proc = subprocess.Popen(
        corral_cmd("server", "--port", str(port), "--home", str(home), "--devices", "2"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def healthy() -> bool:
            assert proc.poll() is None, proc.communicate()
            try:
                return httpx.get(f"{url}/api/v1/health", timeout=5).json()["status"] == "ok"
            except httpx.TransportError:
                return False

        until(healthy, timeout=90, what="the server")
        # The operator's CLI finds the token the server wrote under its home.
        r = run_corral("cluster", env={"CORRAL_SERVER": url, "CORRAL_TOKEN": "", "CORRAL_HOME": str(home)})
        assert r.returncode == 0 and "0/2 devices in use" in r.stdout, r.stderr
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert f"admin token written to {home / 'admin-token'} (also {home / 'token'})" in out
    assert f"{url}/docs" in out and f"dashboard: {url}/" in out
    assert (home / "admin-token").read_text() == (home / "token").read_text()


def test_server_command_refuses_bad_values_and_starts_nothing(cli: Callable[..., Result], tmp_path: Path) -> None:
    home = tmp_path / "home"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = run_corral("server", "--port", str(port), "--home", str(home), "--devices", "2")
        refused(r, f"cannot listen on 127.0.0.1:{port}")
    refused(run_corral("server", "--port", str(free_port()), "--home", str(home), "--devices", "0"), "--devices")
    base = ["server", "--port", str(free_port()), "--home", str(home)]
    refused(cli(*base, "--devices", "-3"), "--devices")
    refused(cli(*base, "--devices", "5000"), "--devices")
    refused(cli(*base, "--policy", "lottery"), "unknown policy 'lottery'", "tiresias")
    refused(cli(*base, "--placer", "nowhere"), "unknown placer")
    refused(cli(*base, "--round", "0"), "--round")
    refused(cli(*base, "--round", "nan"), "--round")
    refused(cli(*base, "--grace", "-1"), "--grace")
    refused(cli(*base, "--executor", "slurm"), "--executor: unknown executor 'slurm'", "local")
    refused(cli("server", "--port", "70000", "--home", str(home)), "--port")
    refused(cli("server", "--port", "-1", "--home", str(home)), "--port")
    assert not home.exists()
    refused(cli(*base, "--db", "nosuchdb://x"), "cannot open database")
    assert not (home / "admin-token").exists()
