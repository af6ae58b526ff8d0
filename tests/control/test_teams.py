"""A service for a team: users' and groups' limits, device quotas, fair-share weights, job arrays,
dependencies and bulk cancel, through the API and the CLI (and the scheduler loop on a fake executor)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from corral.control import accounts
from corral.control.states import JobState
from tests.control import test_cli as shared
from tests.control.conftest import LiveServer
from tests.control.loop_helpers import make_loop
from tests.control.test_cli import Result, refused, write_spec

API = "/api/v1"
cli = shared.cli  # the CLI in this process (a fixture)


@pytest.fixture
def idle(make_server: Callable[..., LiveServer]) -> LiveServer:
    """A live API whose scheduler loop is stopped: nothing starts, every job stays PENDING."""
    live = make_server(devices=4)
    live.service.stop()
    return live


def _job(name: str = "j", **fields: object) -> dict:
    return {"name": name, "entrypoint": "python train.py", "resources": {"gpus": 1}, **fields}


def _count(live: LiveServer) -> int:
    return len(live.service.store.list_jobs(limit=100_000))


# -- limits at submit ------------------------------------------------------------------------------------------


def test_a_submit_over_a_users_queue_or_priority_limit_is_refused_naming_it(idle: LiveServer) -> None:
    bob = idle.client(idle.user("bob"))
    admin = idle.client()
    r = admin.patch(f"{API}/users/bob", json={"max_queued": 2, "max_priority": 5})
    assert r.status_code == 200 and r.json()["max_queued"] == 2, r.text
    r = bob.post(f"{API}/jobs", json=_job(priority=6))
    assert r.status_code == 403 and "max_priority 5 of user bob" in r.json()["detail"]
    assert bob.post(f"{API}/jobs", json=_job(priority=5)).status_code == 201
    assert bob.post(f"{API}/jobs", json=_job()).status_code == 201
    r = bob.post(f"{API}/jobs", json=_job())
    assert r.status_code == 403 and r.json()["detail"].startswith("max_queued: user bob may have 2 jobs waiting")
    assert _count(idle) == 2  # the refused submits changed nothing
    # An admin lifts the limit (null removes it): the same submit goes through.
    assert admin.patch(f"{API}/users/bob", json={"max_queued": None}).json()["max_queued"] is None
    assert bob.post(f"{API}/jobs", json=_job()).status_code == 201


def test_a_group_limit_counts_every_member(idle: LiveServer) -> None:
    admin = idle.client()
    assert admin.post(f"{API}/groups", json={"name": "lab", "max_queued": 3}).status_code == 201
    for name in ("bob", "carol"):
        idle.user(name)
        assert admin.patch(f"{API}/users/{name}", json={"group": "lab"}).json()["group"] == "lab"
    bob, carol = (
        idle.client(idle.service.store.create_user("bob")),
        idle.client(idle.service.store.create_user("carol")),
    )
    assert bob.post(f"{API}/jobs", json=_job()).status_code == 201
    assert carol.post(f"{API}/jobs", json=_job()).status_code == 201
    r = carol.post(f"{API}/jobs", json=_job(array="0-1"))  # two more: 4 > 3
    assert r.status_code == 403 and "group lab may have 3 jobs waiting; 2 wait, this submit adds 2" in r.text
    assert carol.post(f"{API}/jobs", json=_job()).status_code == 201
    assert _count(idle) == 3


def test_accounts_routes_are_for_admins_and_bad_input_changes_nothing(idle: LiveServer) -> None:
    bob = idle.client(idle.user("bob"))
    admin = idle.client()
    nobody = idle.client("")
    for method, path, body in [
        ("GET", "/users", None),
        ("PATCH", "/users/bob", {"max_devices": 1}),
        ("GET", "/groups", None),
        ("POST", "/groups", {"name": "lab"}),
        ("PATCH", "/groups/lab", {"share": 2}),
        ("DELETE", "/groups/lab", None),
    ]:
        assert nobody.request(method, f"{API}{path}", json=body).status_code == 401, path
        r = bob.request(method, f"{API}{path}", json=body)
        assert r.status_code == 403 and "only an admin" in r.json()["detail"], (path, r.text)
    assert admin.post(f"{API}/groups", json={"name": "lab"}).status_code == 201
    cases = [
        ("PATCH", "/users/nobody", {"max_devices": 1}, 404, "no user 'nobody'"),
        ("PATCH", "/users/bob", {"max_devices": -1}, 422, "max_devices"),
        ("PATCH", "/users/bob", {"max_queued": 10**9}, 422, "max_queued"),
        ("PATCH", "/users/bob", {"share": 0}, 422, "share"),
        ("PATCH", "/users/bob", {"group": "nolab"}, 404, "no group 'nolab'"),
        ("PATCH", "/users/bob", {"wat": 1}, 422, "wat: unknown field"),
        ("POST", "/groups", {"name": "lab"}, 409, "group 'lab' exists"),
        ("POST", "/groups", {"name": "bad name"}, 422, "name"),
        ("PATCH", "/groups/nolab", {"share": 2}, 404, "no group 'nolab'"),
        ("DELETE", "/groups/nolab", None, 404, "no group 'nolab'"),
    ]
    for method, path, body, status, fragment in cases:
        r = admin.request(method, f"{API}{path}", json=body)
        assert r.status_code == status and fragment in r.json()["detail"], (path, body, r.text)
    rows = {u.name: u for u in accounts.users(idle.service.store)}
    assert rows["bob"].max_devices is None and rows["bob"].group_name is None and rows["bob"].share == 1.0


def test_cli_sets_limits_and_groups_and_refuses_bad_values(idle: LiveServer, cli: Callable[..., Result]) -> None:
    idle.user("bob")
    env = idle.env()
    r = cli("group", "create", "lab", "--max-devices", "4", "--share", "2", env=env)
    assert r.code == 0 and "lab" in r.out, r.err
    r = cli("user", "set", "bob", "--group", "lab", "--max-devices", "2", "--max-priority", "10", env=env)
    assert r.code == 0 and "bob" in r.out and "lab" in r.out, r.err
    r = cli("user", "list", env=env)
    assert r.code == 0 and "bob" in r.out and "admin" in r.out
    refused(cli("user", "set", "bob", "--max-devices", "-3", env=env), "--max-devices must be between 0")
    refused(cli("user", "set", "bob", "--max-queued", "lots", env=env), "--max-queued: 'lots' is not a whole number")
    refused(cli("user", "set", "bob", env=env), "nothing to set")
    refused(cli("user", "set", "eve", "--share", "1", env=env), "no user 'eve'")
    refused(cli("group", "create", "lab", env=env), "group 'lab' exists")
    refused(cli("group", "set", "lab", "--share", "0", env=env), "--share must be > 0")
    refused(cli("user", "list", env=idle.env(idle.user("carol"))), "only an admin")
    assert accounts.quotas(idle.service.store).users == {"bob": 2}
    r = cli("user", "set", "bob", "--max-devices", "none", env=env)
    assert r.code == 0 and accounts.quotas(idle.service.store).users == {}
    assert accounts.quotas(idle.service.store).groups == {"lab": 4}
    r = cli("group", "delete", "lab", env=env)
    assert r.code == 0 and accounts.groups(idle.service.store) == []


# -- device quotas and shares in the loop --------------------------------------------------------------------------


def test_a_user_at_quota_waits_with_quota_devices_while_others_run(tmp_path: Path) -> None:
    loop = make_loop(tmp_path, devices=4)
    loop.store.create_user("bob")
    accounts.set_user(loop.store, "bob", {"max_devices": 2})
    first = loop.submit("b1", 2, user="bob")
    second = loop.submit("b2", 1, user="bob")
    other = loop.submit("c1", 1, user="carol")
    loop.round()
    assert [loop.job(j).state for j in (first, second, other)] == ["RUNNING", "PENDING", "RUNNING"]
    assert loop.job(second).reason == "QuotaDevices"
    loop.executor.finish(first)
    loop.round(1)
    assert loop.job(second).state == "RUNNING"  # under quota again


def test_the_fairshare_policy_takes_its_shares_from_the_store(tmp_path: Path) -> None:
    loop = make_loop(tmp_path, devices=2, policy="fairshare")
    for name in ("ann", "bob"):
        loop.store.create_user(name)
    accounts.set_user(loop.store, "ann", {"share": 3})
    loop.round()
    assert loop.sched.policy.tree.share("ann") == 3.0 and loop.sched.policy.tree.share("bob") == 1.0


# -- arrays ----------------------------------------------------------------------------------------------------------


def test_an_array_makes_n_jobs_with_their_index_and_value_listed_and_cancelled_together(idle: LiveServer) -> None:
    c = idle.client()
    r = c.post(f"{API}/jobs", json=_job("sweep", array="0-4:2"))
    assert r.status_code == 201, r.text
    first = r.json()
    assert first["array_size"] == 3 and first["array_id"] == first["id"] and first["array_index"] == 0
    jobs = c.get(f"{API}/jobs", params={"array": first["id"]}).json()["jobs"]
    assert sorted(j["array_index"] for j in jobs) == [0, 2, 4]
    assert {j["spec"]["env"]["CORRAL_ARRAY_INDEX"] for j in jobs} == {"0", "2", "4"}
    r = c.post(f"{API}/jobs", json=_job("lrs", array={"values": [0.1, "x", True]}))
    vals = [
        j["spec"]["env"]["CORRAL_ARRAY_VALUE"]
        for j in c.get(f"{API}/jobs", params={"array": r.json()["id"]}).json()["jobs"]
    ]
    assert sorted(vals) == ["0.1", "true", "x"]
    r = c.post(f"{API}/jobs/cancel", json={"array": first["id"]})
    assert r.status_code == 200 and sorted(r.json()["cancelled"]) == sorted(j["id"] for j in jobs)
    assert all(idle.service.store.get_job(j["id"]).state == "CANCELLED" for j in jobs)  # type: ignore[union-attr]
    for bad, fragment in [("0-1000", "at most 1000"), ("5-1", "ends before"), ({"values": []}, "at least 1")]:
        r = c.post(f"{API}/jobs", json=_job(array=bad))
        assert r.status_code == 422 and fragment in r.json()["detail"], r.text
    assert _count(idle) == 6


def test_cli_submits_an_array_and_cancels_by_filter_in_one_request(
    idle: LiveServer, cli: Callable[..., Result], tmp_path: Path
) -> None:
    env = idle.env()
    r = cli("submit", str(write_spec(tmp_path / "a.yaml", name="sweep", array="0-9")), env=env)
    assert r.code == 0 and "submitted array 1: jobs 1..10 (sweep, 10 jobs)" in r.out, r.out + r.err
    r = cli("jobs", env=env)
    assert "sweep[9]" in r.out and "sweep[0]" in r.out
    r = cli("cancel", "3", "4", env=env)
    assert r.code == 0 and "cancelled 2 jobs: 3-4" in r.out
    r = cli("cancel", "--name", "sweep", "--state", "PENDING", env=env)
    assert r.code == 0 and "cancelled 8 jobs: 1-2, 5-10" in r.out, r.out
    refused(cli("cancel", env=env), "give job ids, or --user")
    refused(cli("cancel", "--state", "SUCCEEDED", env=env), "cannot be cancelled")
    bob = idle.user("bob")
    assert idle.client(bob).post(f"{API}/jobs", json=_job()).status_code == 201
    r = cli("cancel", "--user", "alice", env=idle.env(bob))
    refused(r, "only an admin may cancel the jobs of alice")
    r = cli("cancel", "--user", "bob", env=env)  # the admin may
    assert r.code == 0 and "cancelled 1 job: 11" in r.out


def test_bulk_cancel_of_others_jobs_by_id_is_refused_and_changes_nothing(idle: LiveServer) -> None:
    mine = idle.client(idle.user("bob")).post(f"{API}/jobs", json=_job()).json()["id"]
    theirs = idle.client().post(f"{API}/jobs", json=_job()).json()["id"]
    r = idle.client(idle.service.store.create_user("bob")).post(f"{API}/jobs/cancel", json={"ids": [mine, theirs]})
    assert r.status_code == 403 and "belong to admin" in r.json()["detail"]
    assert {idle.service.store.get_job(j).state for j in (mine, theirs)} == {"PENDING"}  # type: ignore[union-attr]
    assert idle.client().post(f"{API}/jobs/cancel", json={}).status_code == 422


def test_a_batch_is_queued_all_or_none(idle: LiveServer) -> None:
    c = idle.client()
    r = c.post(f"{API}/jobs/batch", json={"jobs": [_job("a"), _job("b")]})
    assert r.status_code == 201 and [j["name"] for j in r.json()["jobs"]] == ["a", "b"]
    r = c.post(f"{API}/jobs/batch", json={"jobs": [_job("c"), _job("d", resources={"gpus": 99})]})
    assert r.status_code == 422 and "could never run" in r.json()["detail"]
    assert _count(idle) == 2


# -- dependencies ------------------------------------------------------------------------------------------------


def test_unknown_dependencies_are_refused_at_submit(idle: LiveServer) -> None:
    c = idle.client()
    first = c.post(f"{API}/jobs", json=_job()).json()["id"]
    r = c.post(f"{API}/jobs", json=_job(depends_on=[first, 999]))
    assert r.status_code == 422 and r.json()["detail"] == "depends_on: no job with id 999"
    r = c.post(f"{API}/jobs", json=_job(depends_on=[0]))
    assert r.status_code == 422 and "depends_on.0" in r.json()["detail"]
    assert _count(idle) == 1


def test_a_job_runs_after_its_dependencies_succeed_and_is_cancelled_when_one_fails(tmp_path: Path) -> None:
    loop = make_loop(tmp_path, devices=4)
    a = loop.submit("a")
    b = loop.submit("b")
    ok = loop.submit("after-ok", depends_on=[a, b])
    anyway = loop.submit("after-any", depends_on=[b], after="any")
    loop.round()
    assert loop.job(ok).state == "PENDING" and loop.job(ok).reason == "Dependency"
    assert loop.job(anyway).reason == "Dependency"
    loop.executor.finish(a)
    loop.round(1)
    assert loop.job(ok).state == "PENDING"  # b still runs
    loop.executor.finish(b, exit_code=1)
    loop.round(1)
    gone = loop.job(ok)
    assert gone.state == JobState.CANCELLED.value and gone.reason == "DependencyNeverSatisfied"
    assert (
        "b" not in loop.path(ok)
        and "dependency never satisfied (after ok): 2 FAILED" in loop.store.events(ok)[-1].cause
    )
    assert loop.job(anyway).state == "RUNNING"  # after any: a failure ends it too


def test_a_job_waiting_for_a_dependency_holds_no_devices_and_blocks_no_one(tmp_path: Path) -> None:
    loop = make_loop(tmp_path, devices=2)
    a = loop.submit("a", 1)
    waiting = loop.submit("big", 2, depends_on=[a], priority=10)
    other = loop.submit("other", 1)
    loop.round()
    assert loop.job(waiting).state == "PENDING" and loop.job(other).state == "RUNNING"


def test_a_job_cancelled_for_its_dependency_is_not_shown_to_the_policy_in_that_round(tmp_path: Path) -> None:
    loop = make_loop(tmp_path, devices=4, policy="fifo")
    a = loop.submit("a", 4)
    dep = loop.submit("dep", 1, depends_on=[a])
    late = loop.submit("late", 4)
    loop.round()
    assert loop.job(a).state == "RUNNING" and loop.job(late).state == "PENDING"
    loop.executor.finish(a, exit_code=1)
    loop.round(1)
    # `dep` is CANCELLED this round; had fifo still seen it, it would have put it ahead of `late`.
    assert loop.job(dep).state == "CANCELLED" and loop.job(late).state == "RUNNING"
