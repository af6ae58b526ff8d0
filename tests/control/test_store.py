"""The store: jobs, transitions recorded with their cause, users and hashed tokens; on SQLite and PostgreSQL."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import pytest
from sqlalchemy.exc import StatementError

from corral.control.states import JobState
from corral.control.store import Job, Store, hash_token
from corral.errors import UserError


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    """A store on an empty database: SQLite, then PostgreSQL."""
    store = Store(db_url)
    yield store
    store.close()


def test_sqlite_runs_in_wal_mode(tmp_path) -> None:
    Store(f"sqlite:///{tmp_path / 'corral.db'}").add_job({"name": "a", "entrypoint": "x"}, "alice")
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


def test_values_postgresql_refuses_are_handled_alike_on_both(store) -> None:
    """NUL in text (a job's output), NaN in JSON, ids past 32 bits: the same answer on SQLite and PostgreSQL."""
    job = store.add_job({"name": "a", "entrypoint": "x", "env": {"A": "nul \x00 in json is escaped"}}, "alice")
    with store.session() as s:
        j = s.get(Job, job.id)
        j.last_log = "binary \x00 output"
        store.transition(s, j, JobState.CANCELLED, "cause \x00")
    got = store.get_job(job.id)
    assert got.last_log == "binary \ufffd output" and got.spec["env"]["A"] == "nul \x00 in json is escaped"
    assert store.events(job.id)[-1].cause == "cause \ufffd"
    with pytest.raises((ValueError, StatementError), match="not JSON compliant"):
        store.add_metrics(job.id, 1, {"loss": float("nan")})
    assert store.metrics(job.id) == []
    assert store.get_job(3_000_000_000) is None and store.get_job(2**63) is None and store.get_job(0) is None


def test_a_postgresql_url_without_a_driver_uses_psycopg(postgres_url: str) -> None:
    store = Store(postgres_url.replace("postgresql+psycopg://", "postgresql://"))
    assert store.engine.dialect.driver == "psycopg" and store.get_job(1) is None
    store.close()
