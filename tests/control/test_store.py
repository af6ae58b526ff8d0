"""The store: jobs, transitions recorded with their cause, users and hashed tokens."""

from __future__ import annotations

import sqlite3

import pytest

from corral.control.states import JobState
from corral.control.store import Job, Store, hash_token
from corral.errors import UserError


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(f"sqlite:///{tmp_path / 'corral.db'}")


def test_sqlite_runs_in_wal_mode(store, tmp_path) -> None:
    store.add_job({"name": "a", "entrypoint": "x"}, "alice")
    assert sqlite3.connect(tmp_path / "corral.db").execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_transitions_are_recorded_and_invalid_ones_refused(store) -> None:
    job = store.add_job(
        {"name": "a", "entrypoint": "x", "resources": {"gpus": 2, "min_gpus": 2, "max_gpus": 2}}, "alice"
    )
    assert (job.state, job.gpus) == ("PENDING", 2)
    with store.session() as s:
        j = s.get(Job, job.id)
        store.transition(s, j, JobState.RUNNING, "scheduled on n0:0,1")
        store.transition(s, j, JobState.SUCCEEDED, "exit code 0")
    with pytest.raises(ValueError, match="SUCCEEDED -> RUNNING is not a valid transition"):
        with store.session() as s:
            store.transition(s, s.get(Job, job.id), JobState.RUNNING, "again")
    assert [(e.src, e.dst, e.cause) for e in store.events(job.id)] == [
        ("", "PENDING", "submitted"),
        ("PENDING", "RUNNING", "scheduled on n0:0,1"),
        ("RUNNING", "SUCCEEDED", "exit code 0"),
    ]
    assert store.get_job(job.id).state == "SUCCEEDED"  # the refused move changed nothing


def test_tokens_are_stored_hashed(store) -> None:
    token = store.create_user("alice", admin=True)
    user = store.user_for_token(token)
    assert user is not None and user.name == "alice" and user.is_admin
    assert user.token_hash == hash_token(token) != token
    assert store.user_for_token("wrong") is None
    assert store.has_admin()


def test_list_filters_by_state_and_user(store) -> None:
    for user in ("alice", "bob", "alice"):
        store.add_job({"name": "j", "entrypoint": "x"}, user)
    assert [j.user for j in store.list_jobs(user="alice")] == ["alice", "alice"]
    assert len(store.list_jobs(states=["PENDING"])) == 3 and store.list_jobs(states=["RUNNING"]) == []


def test_unreachable_database_is_a_user_error() -> None:
    with pytest.raises(UserError, match="cannot open database"):
        Store("sqlite:////nonexistent-dir/x/y.db")
