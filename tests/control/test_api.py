"""The HTTP API: every route with good and bad input; bad input is one 4xx line and changes nothing.

Every test runs twice: on SQLite, and on PostgreSQL (the `server` fixture below takes `db_url`).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from tests.conftest import ROOT, WORKERS
from tests.control.conftest import LiveServer

API = "/api/v1"


@pytest.fixture
def server(make_server: Callable[..., LiveServer], db_url: str) -> LiveServer:
    """A live server with 2 device slots and the priority policy, on SQLite, then on PostgreSQL."""
    return make_server(db=db_url)


def spec(name: str = "j", cmd: str = "python -c pass", gpus: int = 1, **extra) -> dict:
    return {"name": name, "entrypoint": cmd, "workdir": str(ROOT), "resources": {"gpus": gpus}, **extra}


def sleeper(seconds: float = 60) -> str:
    return f"{sys.executable} {WORKERS / 'sleeper.py'} {seconds}"


def snapshot(server: LiveServer) -> list[tuple]:
    """Everything a bad request must leave untouched: jobs, their states and events, users."""
    store = server.service.store
    jobs = [(j.id, j.state, j.reason, j.attempt) for j in store.list_jobs()]
    events = [(j[0], len(store.events(j[0]))) for j in jobs]
    with store.session() as s:
        from sqlalchemy import func, select

        from corral.control.store import Metric, User

        users = s.scalar(select(func.count()).select_from(User))
        metrics = s.scalar(select(func.count()).select_from(Metric))
    return [*jobs, *events, ("users", users), ("metrics", metrics)]


def wait_state(server: LiveServer, job_id: int, states: set[str], timeout: float = 60) -> dict:
    c = server.client()
    deadline = time.monotonic() + timeout
    while True:
        job = c.get(f"{API}/jobs/{job_id}").json()
        if job["state"] in states:
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.1)


def one_line(resp) -> str:
    detail = resp.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and detail, resp.text
    return detail


# -- auth ---------------------------------------------------------------------------


# Every route under /api/v1 that takes a token, each with a request that is valid in every other way: with
# the admin's token it succeeds (2xx), so the 401 it gets without one can come from nothing but authentication
# (a 422 for a bad body can no longer pass). Paths are the app's route templates: {job_id} is a waiting job of
# alice's, {name} is alice (group "team" under /groups). A new route must be added here
# (test_the_auth_table_covers_every_route).
AUTH_ROUTES: dict[tuple[str, str], Callable[[int], dict[str, Any] | None]] = {
    ("GET", "/jobs"): lambda job: None,
    ("POST", "/jobs"): lambda job: spec("authcheck"),
    ("POST", "/jobs/batch"): lambda job: {"jobs": [spec("authcheck")]},
    ("POST", "/jobs/cancel"): lambda job: {"ids": [job]},
    ("GET", "/jobs/{job_id}"): lambda job: None,
    ("POST", "/jobs/{job_id}/cancel"): lambda job: None,
    ("GET", "/jobs/{job_id}/events"): lambda job: None,
    ("GET", "/jobs/{job_id}/metrics"): lambda job: None,
    ("POST", "/jobs/{job_id}/metrics"): lambda job: {"records": [{"step": 1, "values": {"loss": 0.5}}]},
    ("GET", "/jobs/{job_id}/logs"): lambda job: None,
    ("GET", "/cluster"): lambda job: None,
    ("GET", "/whoami"): lambda job: None,
    ("POST", "/users"): lambda job: {"name": "mallory"},
    ("POST", "/users/{name}/revoke"): lambda job: None,
    ("GET", "/users"): lambda job: None,
    ("PATCH", "/users/{name}"): lambda job: {"max_queued": 5},
    ("GET", "/groups"): lambda job: None,
    ("POST", "/groups"): lambda job: {"name": "newgroup"},
    ("PATCH", "/groups/{name}"): lambda job: {"share": 2.0},
    ("DELETE", "/groups/{name}"): lambda job: None,
}
# Routes only an admin may use (403 for anyone else), with the same valid requests.
ADMIN_ROUTES = [
    ("POST", "/users"),
    ("POST", "/users/{name}/revoke"),
    ("GET", "/users"),
    ("PATCH", "/users/{name}"),
    ("GET", "/groups"),
    ("POST", "/groups"),
    ("PATCH", "/groups/{name}"),
    ("DELETE", "/groups/{name}"),
]
NO_TOKEN = {"/health"}  # under /api/v1 and open to all


def auth_request(server: LiveServer, token: str, method: str, path: str, job: int) -> Any:
    body = AUTH_ROUTES[method, path](job)
    url = API + path.format(job_id=job, name="team" if path.startswith("/groups/") else "alice")
    return server.client(token).request(method, url, **({} if body is None else {"json": body}))


@pytest.fixture
def idle_server(server: LiveServer) -> tuple[LiveServer, int]:
    """The server with its scheduler stopped (nothing moves while a test compares snapshots), user alice, a
    job of hers that waits, and group team."""
    server.service.stop()
    assert server.client().post(f"{API}/groups", json={"name": "team"}).status_code == 201
    alice = server.client(server.user("alice"))
    job = alice.post(f"{API}/jobs", json=spec("waits"))
    assert job.status_code == 201, job.text
    return server, int(job.json()["id"])


def test_the_auth_table_covers_every_route(server: LiveServer) -> None:
    from corral.control.api import create_app

    paths = create_app(server.service).openapi()["paths"]
    routes = {
        (method.upper(), path.removeprefix(API))
        for path, operations in paths.items()
        if path.startswith(API + "/") and path.removeprefix(API) not in NO_TOKEN
        for method in operations
    }
    assert routes == set(AUTH_ROUTES)


@pytest.mark.parametrize("method,path", list(AUTH_ROUTES))
def test_every_route_needs_a_token(idle_server: tuple[LiveServer, int], method: str, path: str) -> None:
    server, job = idle_server
    before = snapshot(server)
    for token in ("", "not-a-token"):
        resp = auth_request(server, token, method, path, job)
        assert resp.status_code == 401, resp.text
        assert resp.headers["www-authenticate"] == "Bearer"
        assert "token" in one_line(resp)
    assert snapshot(server) == before
    # The same request with a valid token is accepted: the 401 above came from the missing token alone.
    resp = auth_request(server, server.token, method, path, job)
    assert 200 <= resp.status_code < 300, resp.text


@pytest.mark.parametrize("method,path", ADMIN_ROUTES)
def test_admin_routes_refuse_other_users(idle_server: tuple[LiveServer, int], method: str, path: str) -> None:
    server, job = idle_server
    bob = server.user("bob")
    alice = server.service.store.get_user("alice")
    before = snapshot(server)
    resp = auth_request(server, bob, method, path, job)
    assert resp.status_code == 403 and "admin" in one_line(resp), resp.text
    assert snapshot(server) == before
    after = server.service.store.get_user("alice")
    assert alice and after and after.token_hash == alice.token_hash  # alice's token was left alone
    assert 200 <= auth_request(server, server.token, method, path, job).status_code < 300


def test_health_and_docs_need_no_token(server: LiveServer) -> None:
    c = server.client("")
    assert c.get(f"{API}/health").json()["status"] == "ok"
    assert c.get("/openapi.json").json()["info"]["title"] == "corral"
    assert c.get("/docs").status_code == 200
    assert "corral" in c.get("/").text


def test_admin_creates_users_and_others_cannot(server: LiveServer) -> None:
    admin = server.client()
    resp = admin.post(f"{API}/users", json={"name": "alice"})
    assert resp.status_code == 201
    alice = server.client(resp.json()["token"])
    assert alice.get(f"{API}/whoami").json() == {"name": "alice", "admin": False}
    before = snapshot(server)
    resp = alice.post(f"{API}/users", json={"name": "mallory", "admin": True})
    assert resp.status_code == 403 and "admin" in one_line(resp)
    for bad in ({"name": ""}, {"name": "a b"}, {"name": "x" * 65}, {}, {"name": "ok", "extra": 1}):
        assert admin.post(f"{API}/users", json=bad).status_code == 422
    assert snapshot(server) == before


def test_rekeying_a_user_reports_admin_as_stored(server: LiveServer) -> None:
    admin = server.client()
    first = admin.post(f"{API}/users", json={"name": "carol", "admin": True}).json()
    assert first["admin"] is True
    again = admin.post(f"{API}/users", json={"name": "carol"})  # no "admin": a re-key never demotes
    assert again.status_code == 201 and again.json()["admin"] is True, again.text
    assert server.client(again.json()["token"]).get(f"{API}/whoami").json() == {"name": "carol", "admin": True}
    assert server.client(first["token"]).get(f"{API}/whoami").status_code == 401  # the old token ended
    dave = admin.post(f"{API}/users", json={"name": "dave"}).json()
    assert dave["admin"] is False
    promoted = admin.post(f"{API}/users", json={"name": "dave", "admin": True}).json()
    assert promoted["admin"] is True
    assert server.client(promoted["token"]).get(f"{API}/whoami").json() == {"name": "dave", "admin": True}


def test_concurrent_creations_of_one_name_never_fail(server: LiveServer) -> None:
    names, per_name = [f"racer{i}" for i in range(12)], 6
    users_before = dict(x for x in snapshot(server) if x[0] == "users")["users"]
    barrier = threading.Barrier(len(names) * per_name)
    answers: list[tuple[str, int, dict]] = []
    lock = threading.Lock()

    def create(name: str) -> None:
        with server.client() as c:
            barrier.wait()
            r = c.post(f"{API}/users", json={"name": name})
            with lock:
                answers.append((name, r.status_code, r.json() if r.status_code == 201 else {"text": r.text}))

    threads = [threading.Thread(target=create, args=(n,)) for n in names for _ in range(per_name)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [a for a in answers if a[1] != 201] == []  # never a 500: the loser of a race re-keys
    assert dict(x for x in snapshot(server) if x[0] == "users")["users"] == users_before + len(names)
    for name in names:  # as if one came after the other: exactly one token (the last) is valid
        valid = [
            a[2]
            for a in answers
            if a[0] == name
            if server.client(a[2]["token"]).get(f"{API}/whoami").status_code == 200
        ]
        assert len(valid) == 1 and valid[0]["admin"] is False, (name, valid)


def test_a_lost_race_on_a_new_name_becomes_a_rekey(server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The race above made certain: another creation of the name commits between the lookup and the insert."""
    store = server.service.store
    real_session = store.session
    rival: list[str] = []

    @contextmanager
    def session() -> Iterator[Any]:
        with real_session() as s:
            scalar = s.scalar

            def scalar_then_rival(stmt: Any, *args: Any, **kw: Any) -> Any:
                got = scalar(stmt, *args, **kw)
                if got is None and not rival and "users.name" in str(stmt):
                    rival.append("")
                    rival[0] = store.create_user("eve")  # commits first, on another connection
                return got

            s.scalar = scalar_then_rival  # type: ignore[method-assign]
            yield s

    monkeypatch.setattr(store, "session", session)
    resp = server.client().post(f"{API}/users", json={"name": "eve"})
    assert resp.status_code == 201, resp.text
    assert rival and rival[0]
    monkeypatch.undo()
    assert server.client(resp.json()["token"]).get(f"{API}/whoami").json() == {"name": "eve", "admin": False}
    assert server.client(rival[0]).get(f"{API}/whoami").status_code == 401  # re-keyed after it
    with store.session() as s:
        from sqlalchemy import func, select

        from corral.control.store import User

        assert s.scalar(select(func.count()).select_from(User).where(User.name == "eve")) == 1


# -- submit ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body,expect",
    [
        ({"name": "x", "entrypoint": "python -c pass", "bogus": 1}, "bogus: unknown field"),
        ({"name": "x"}, "entrypoint: Field required"),
        ({"name": "x", "entrypoint": "p", "resources": {"gpus": -1}}, "resources.gpus"),
        ({"name": "x", "entrypoint": "p", "resources": {"gpus": 0}}, "resources.gpus"),
        ({"name": "x", "entrypoint": "p", "resources": {"gpus": 3}}, "at least 3 devices; this cluster has 2"),
        ({"name": "x", "entrypoint": "p", "resources": {"min_gpus": 3, "max_gpus": 4}}, "at least 3 devices"),
        ({"name": "x", "entrypoint": "p", "resources": {"min_gpus": 2, "max_gpus": 1}}, "min_gpus (2) must be <="),
        ({"name": "x", "entrypoint": "p", "priority": 10**6}, "priority"),
        ({"name": "x", "entrypoint": "p", "max_restarts": -1}, "max_restarts"),
        ({"name": "x", "entrypoint": "'unclosed"}, "entrypoint is not a valid command line"),
        ({"name": "bad name!", "entrypoint": "p"}, "name"),
        ([1, 2], "body"),
    ],
)
def test_bad_specs_are_refused_and_change_nothing(server: LiveServer, body, expect: str) -> None:
    before = snapshot(server)
    resp = server.client().post(f"{API}/jobs", json=body)
    assert resp.status_code == 422
    assert expect in one_line(resp)
    assert snapshot(server) == before


@pytest.mark.parametrize(
    "field,literal",
    [
        ("timeout", "NaN"),
        ("timeout", "Infinity"),
        ("timeout", "-Infinity"),
        ("duration_estimate", "NaN"),
        ("duration_estimate", "Infinity"),
    ],
)
def test_spec_refuses_nan_and_infinity(server: LiveServer, field: str, literal: str) -> None:
    server.service.stop()  # the store only: a bad submission must change nothing
    before = snapshot(server)
    raw = f'{{"name": "x", "entrypoint": "python -c pass", "{field}": {literal}}}'  # Python's JSON reads these
    resp = server.client().post(f"{API}/jobs", content=raw, headers={"content-type": "application/json"})
    assert resp.status_code == 422, resp.text
    assert one_line(resp) == f"{field}: Input should be a finite number"
    assert snapshot(server) == before


def test_malformed_json_is_refused(server: LiveServer) -> None:
    before = snapshot(server)
    resp = server.client().post(f"{API}/jobs", content=b"name: [", headers={"content-type": "application/json"})
    assert resp.status_code == 422 and one_line(resp)
    assert snapshot(server) == before


def test_submit_runs_to_success_and_records_every_transition(server: LiveServer) -> None:
    c = server.client()
    resp = c.post(f"{API}/jobs", json=spec("ok", f"{sys.executable} {WORKERS / 'torchrun_style.py'}", gpus=2))
    assert resp.status_code == 201
    job = resp.json()
    assert job["state"] == "PENDING" and job["user"] == "admin" and job["gpus"] == 2
    done = wait_state(server, job["id"], {"SUCCEEDED", "FAILED"})
    assert done["state"] == "SUCCEEDED" and done["exit_code"] == 0 and done["queue_time"] >= 0
    events = c.get(f"{API}/jobs/{job['id']}/events").json()["events"]
    assert [(e["src"], e["dst"]) for e in events] == [("", "PENDING"), ("PENDING", "RUNNING"), ("RUNNING", "SUCCEEDED")]
    assert "local:0,local:1" in events[1]["cause"]
    assert events[1]["data"] == {"allocation": {"local": [0, 1]}, "attempt": 1}  # structured, not parsed from text
    log = c.get(f"{API}/jobs/{job['id']}/logs").text
    assert "[rank 0]" in log and "[rank 1]" in log
    assert "[rank" not in c.get(f"{API}/jobs/{job['id']}/logs", params={"rank": 1}).text


# -- list, get, events ---------------------------------------------------------------


def test_list_filters_by_state_and_user(server: LiveServer) -> None:
    admin = server.client()
    bob = server.client(server.user("bob"))
    running = admin.post(f"{API}/jobs", json=spec("long", sleeper(), gpus=2)).json()
    wait_state(server, running["id"], {"RUNNING"})
    waiting = bob.post(f"{API}/jobs", json=spec("waits", sleeper(), gpus=2)).json()
    jobs = admin.get(f"{API}/jobs").json()["jobs"]
    assert [j["id"] for j in jobs] == [waiting["id"], running["id"]]  # newest first
    assert [j["name"] for j in admin.get(f"{API}/jobs", params={"state": "RUNNING"}).json()["jobs"]] == ["long"]
    both = admin.get(f"{API}/jobs", params=[("state", "RUNNING"), ("state", "PENDING")]).json()["jobs"]
    assert len(both) == 2
    assert [j["name"] for j in admin.get(f"{API}/jobs", params={"user": "bob"}).json()["jobs"]] == ["waits"]
    deadline = time.monotonic() + 30
    while (pending := admin.get(f"{API}/jobs/{waiting['id']}").json())["reason"] == "Scheduling":
        assert time.monotonic() < deadline  # "Scheduling": no round has looked at it yet
        time.sleep(0.05)
    assert pending["state"] == "PENDING" and pending["reason"] == "Resources"  # squeue's reason column
    assert len(admin.get(f"{API}/jobs", params={"limit": 1}).json()["jobs"]) == 1
    for bad in ({"state": "NOPE"}, {"limit": 0}, {"limit": -5}, {"limit": 10**9}):
        assert admin.get(f"{API}/jobs", params=bad).status_code == 422
    cluster = admin.get(f"{API}/cluster").json()
    assert cluster["total"] == 2 and cluster["used"] == 2 and cluster["pending"] == 1
    assert {d["job_name"] for d in cluster["devices"]} == {"long"}


def test_others_see_env_values_redacted_and_no_last_log(server: LiveServer) -> None:
    server.service.stop()  # jobs stay PENDING: only what the API shows is under test
    alice = server.client(server.user("alice"))
    bob = server.client(server.user("bob"))
    env = {"API_KEY": "hunter2", "OMP_NUM_THREADS": "1"}
    submitted = alice.post(f"{API}/jobs", json=spec("secret", env=env)).json()
    assert submitted["spec"]["env"] == env  # the owner's own answer is whole
    with server.service.store.session() as s:
        from corral.control.store import Job

        s.get(Job, submitted["id"]).last_log = "Traceback: bad key hunter2"
    bobs = bob.post(f"{API}/jobs", json=spec("mine", env={"MINE": "x"})).json()
    one = bob.get(f"{API}/jobs/{submitted['id']}").json()
    listed = {j["id"]: j for j in bob.get(f"{API}/jobs").json()["jobs"]}
    for view in (one, listed[submitted["id"]]):
        assert view["spec"]["env"] == {"API_KEY": "***", "OMP_NUM_THREADS": "***"}  # keys kept, values gone
        assert view["last_log"] == "" and view["spec"]["entrypoint"] == "python -c pass"
    assert "hunter2" not in bob.get(f"{API}/jobs").text + bob.get(f"{API}/jobs/{submitted['id']}").text
    assert listed[bobs["id"]]["spec"]["env"] == {"MINE": "x"}  # bob's own job in full
    for who in (alice, server.client()):  # the owner and an admin see everything
        for view in (
            who.get(f"{API}/jobs/{submitted['id']}").json(),
            next(j for j in who.get(f"{API}/jobs").json()["jobs"] if j["id"] == submitted["id"]),
        ):
            assert view["spec"]["env"] == env and view["last_log"] == "Traceback: bad key hunter2"


@pytest.mark.parametrize(
    "path",
    [
        "/jobs/999",
        "/jobs/999/events",
        "/jobs/999/metrics",
        "/jobs/999/logs",
        "/jobs/0",
        "/jobs/-3",
        "/jobs/99999999999999999999",
    ],
)
def test_unknown_job_ids(server: LiveServer, path: str) -> None:
    resp = server.client().get(API + path)
    assert resp.status_code in (404, 422)
    assert one_line(resp)


def test_unknown_job_cancel_changes_nothing(server: LiveServer) -> None:
    before = snapshot(server)
    resp = server.client().post(f"{API}/jobs/42/cancel")
    assert resp.status_code == 404 and one_line(resp) == "no job with id 42"
    assert snapshot(server) == before


# -- cancel and ownership ---------------------------------------------------------------


def test_cancel_running_job_stops_every_rank_and_owner_rules(server: LiveServer) -> None:
    alice = server.client(server.user("alice"))
    bob = server.client(server.user("bob"))
    job = alice.post(f"{API}/jobs", json=spec("s", sleeper(), gpus=2)).json()
    wait_state(server, job["id"], {"RUNNING"})
    before = snapshot(server)
    for path in (f"/jobs/{job['id']}/cancel", f"/jobs/{job['id']}/logs"):
        resp = bob.post(API + path) if path.endswith("cancel") else bob.get(API + path)
        assert resp.status_code == 403 and "belongs to alice" in one_line(resp)
    assert snapshot(server) == before
    assert bob.get(f"{API}/jobs/{job['id']}").status_code == 200  # anyone may look, like squeue
    pids = server.service.executor.runs[job["id"]].pid
    assert alice.post(f"{API}/jobs/{job['id']}/cancel").status_code == 200
    done = wait_state(server, job["id"], {"CANCELLED", "FAILED", "SUCCEEDED"}, timeout=60)
    assert done["state"] == "CANCELLED"
    import psutil

    assert not psutil.pid_exists(pids) or psutil.Process(pids).status() == psutil.STATUS_ZOMBIE
    resp = alice.post(f"{API}/jobs/{job['id']}/cancel")
    assert resp.status_code == 409 and "already ended" in one_line(resp)


def test_admin_cancels_a_waiting_job_at_once(server: LiveServer) -> None:
    bob = server.client(server.user("bob"))
    blocker = bob.post(f"{API}/jobs", json=spec("b", sleeper(), gpus=2)).json()
    wait_state(server, blocker["id"], {"RUNNING"})
    waiting = bob.post(f"{API}/jobs", json=spec("w", sleeper(), gpus=1)).json()
    resp = server.client().post(f"{API}/jobs/{waiting['id']}/cancel")
    assert resp.json()["state"] == "CANCELLED"
    server.client().post(f"{API}/jobs/{blocker['id']}/cancel")
    wait_state(server, blocker["id"], {"CANCELLED"})


# -- logs ----------------------------------------------------------------------------------


def test_follow_logs_drops_no_lines(server: LiveServer) -> None:
    c = server.client()
    n = 400
    job = c.post(f"{API}/jobs", json=spec("printer", f"{sys.executable} {WORKERS / 'printer.py'} {n}")).json()
    wait_state(server, job["id"], {"RUNNING", "SUCCEEDED"})
    with c.stream("GET", f"{API}/jobs/{job['id']}/logs", params={"follow": True, "rank": 0}) as resp:
        text = "".join(resp.iter_text())
    assert [ln for ln in text.splitlines() if ln.startswith("line")] == [f"line {i}" for i in range(n)]
    # Offsets: reading from where the last read ended gives the rest, nothing twice.
    first = c.get(f"{API}/jobs/{job['id']}/logs", params={"rank": 0, "offset": 0})
    off = int(first.headers["x-corral-offset"])
    assert c.get(f"{API}/jobs/{job['id']}/logs", params={"rank": 0, "offset": off}).text == ""
    for bad in ({"rank": -1}, {"offset": -1}, {"rank": 10**6}):
        assert c.get(f"{API}/jobs/{job['id']}/logs", params=bad).status_code == 422


def test_logs_are_read_through_the_executor(server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> None:
    server.service.stop()
    c = server.client()
    job = c.post(f"{API}/jobs", json=spec("remote")).json()
    big = b"".join(b"line %d %s\n" % (i, b"x" * (i % 300)) for i in range(20_000)) + b"no newline at the end"
    assert len(big) > 2 << 20  # more than two reads' worth
    logs = {None: big, 0: b"rank zero\n"}
    calls: list[tuple] = []

    def read_log(job_id: int, rank: int | None, offset: int = 0, limit: int = 1 << 20) -> bytes:
        calls.append((job_id, rank))
        return logs[rank][offset : offset + limit]

    monkeypatch.setattr(server.service.executor, "read_log", read_log)
    resp = c.get(f"{API}/jobs/{job['id']}/logs", params={"rank": 0, "offset": 2})
    assert resp.text == "nk zero\n" and resp.headers["x-corral-offset"] == "10"
    assert calls == [(job["id"], 0)]
    assert c.post(f"{API}/jobs/{job['id']}/cancel").json()["state"] == "CANCELLED"
    with c.stream("GET", f"{API}/jobs/{job['id']}/logs", params={"follow": True}) as r:
        followed = b"".join(r.iter_bytes())
    assert followed == big  # an ended job's log comes whole, however long, with its last partial line


# -- metrics ---------------------------------------------------------------------------------


def test_metrics_report_with_job_token_or_owner(server: LiveServer) -> None:
    alice_token = server.user("alice")
    alice = server.client(alice_token)
    job = alice.post(f"{API}/jobs", json=spec("m", sleeper())).json()
    wait_state(server, job["id"], {"RUNNING"})  # started: the snapshot below must not see it start
    body = {"records": [{"step": 1, "values": {"loss": 2.0}}, {"step": 2, "values": {"loss": 1.5, "progress": 0.5}}]}
    assert alice.post(f"{API}/jobs/{job['id']}/metrics", json=body).status_code == 204
    got = alice.get(f"{API}/jobs/{job['id']}/metrics").json()["metrics"]
    assert [(m["step"], m["values"]["loss"]) for m in got] == [(1, 2.0), (2, 1.5)]
    assert alice.get(f"{API}/jobs/{job['id']}").json()["progress"] == 0.5
    before = snapshot(server)
    bob = server.client(server.user("bob"))
    assert bob.post(f"{API}/jobs/{job['id']}/metrics", json=body).status_code == 403
    assert server.client("nope").post(f"{API}/jobs/{job['id']}/metrics", json=body).status_code == 401
    for bad in (
        {"records": []},
        {"records": [{"step": -1, "values": {}}]},
        {"records": [{"step": 1, "values": {"a": "x"}}]},
        {},
    ):
        assert alice.post(f"{API}/jobs/{job['id']}/metrics", json=bad).status_code == 422
    assert alice.post(f"{API}/jobs/777/metrics", json=body).status_code == 404
    after = snapshot(server)
    assert [x for x in after if x[0] != "users"] == [x for x in before if x[0] != "users"]
    alice.post(f"{API}/jobs/{job['id']}/cancel")


@pytest.mark.parametrize(
    "raw,field",
    [
        ('{"records":[{"step":1,"values":{"loss":NaN}}]}', "records.0.values.loss"),
        ('{"records":[{"step":1,"values":{"loss":Infinity}}]}', "records.0.values.loss"),
        ('{"records":[{"step":1,"values":{"loss":-Infinity}}]}', "records.0.values.loss"),
        (
            '{"records":[{"step":1,"values":{"loss":1.0}},{"step":2,"values":{"progress":NaN}}]}',
            "records.1.values.progress",
        ),
        ('{"records":[{"step":1,"values":{"progress":Infinity}}]}', "records.0.values.progress"),
        ('{"records":[{"step":1,"values":{"loss":1.0},"time":NaN}]}', "records.0.time"),
    ],
)
def test_metrics_refuse_nan_and_infinity(server: LiveServer, raw: str, field: str) -> None:
    server.service.stop()  # the job stays PENDING, so the snapshot is stable
    c = server.client()
    job = c.post(f"{API}/jobs", json=spec("m")).json()
    before = snapshot(server)
    resp = c.post(f"{API}/jobs/{job['id']}/metrics", content=raw, headers={"content-type": "application/json"})
    assert resp.status_code == 422, resp.text
    assert one_line(resp) == f"{field}: Input should be a finite number"
    assert snapshot(server) == before  # not even the good record of the batch
    assert c.get(f"{API}/jobs/{job['id']}/metrics").json() == {"metrics": []}
    assert c.get(f"{API}/jobs/{job['id']}").json()["progress"] is None


def test_prometheus_metrics(server: LiveServer) -> None:
    c = server.client()
    c.post(f"{API}/jobs", json=spec("a", sleeper(), gpus=2))
    c.post(f"{API}/jobs", json=spec("b", sleeper(), gpus=2))
    deadline = time.monotonic() + 30
    while "corral_devices_used 2.0" not in (text := server.client("").get("/metrics").text):
        assert time.monotonic() < deadline, text
        time.sleep(0.1)
    assert 'corral_jobs{state="RUNNING"} 1.0' in text and 'corral_jobs{state="PENDING"} 1.0' in text
    assert "corral_devices_total 2.0" in text
    for job in c.get(f"{API}/jobs").json()["jobs"]:
        c.post(f"{API}/jobs/{job['id']}/cancel")


# -- load ------------------------------------------------------------------------------------------


def test_200_concurrent_submissions_make_exactly_200_jobs(server: LiveServer) -> None:
    server.service.stop()  # only the store is under test: no runs
    token = server.token
    errors: list[str] = []
    ids: list[int] = []
    lock = threading.Lock()

    def submit(k: int) -> None:
        with server.client(token) as c:
            for i in range(10):
                r = c.post(f"{API}/jobs", json=spec(f"t{k}-{i}", "python -c pass"))
                with lock:
                    (ids.append(r.json()["id"]) if r.status_code == 201 else errors.append(r.text))

    threads = [threading.Thread(target=submit, args=(k,)) for k in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(ids) == len(set(ids)) == 200
    jobs = server.service.store.list_jobs(limit=10_000)
    assert len(jobs) == 200 and {j.name for j in jobs} == {f"t{k}-{i}" for k in range(20) for i in range(10)}
