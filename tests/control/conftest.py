"""A live corral service for tests: API on a free 127.0.0.1 port, scheduler loop, temp home and database.

Databases: `db_url` is parametrised over SQLite and PostgreSQL (a fresh database on one server per
session, `postgres_server`); a test or fixture that takes it runs once on each.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from corral.control.server import ServerThread
from corral.control.service import Service, ServiceConfig
from tests.control.postgres import PostgresServer, in_ci

DATABASES = ["sqlite", "postgresql"]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the whole session; fails under CI (CI=true) if it cannot start, else skips."""
    try:
        server = PostgresServer()
    except Exception as exc:
        reason = f"PostgreSQL could not be started: {str(exc).strip()[:500]}"
        if in_ci():
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """The URL of a new, empty PostgreSQL database, dropped after the test."""
    name = postgres_server.create_database()
    yield postgres_server.url(name)
    postgres_server.drop_database(name)


@pytest.fixture(params=DATABASES)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database's SQLAlchemy URL: SQLite in tmp_path, then PostgreSQL (one test run on each)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'corral.db'}"
    return str(request.getfixturevalue("postgres_url"))


@dataclass
class LiveServer:
    """A running service and what a client needs to reach it."""

    url: str
    token: str  # the admin's
    home: Path
    service: Service

    def client(self, token: str | None = None) -> httpx.Client:
        """An HTTP client with a bearer token (the admin's by default; "" for none)."""
        tok = self.token if token is None else token
        headers = {"Authorization": f"Bearer {tok}"} if tok else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def user(self, name: str) -> str:
        """Create user `name`; return their token."""
        return self.service.store.create_user(name)

    def env(self, token: str | None = None) -> dict[str, str]:
        """Environment for a `corral` CLI subprocess talking to this server."""
        return {
            "CORRAL_SERVER": self.url,
            "CORRAL_TOKEN": self.token if token is None else token,
            "CORRAL_HOME": str(self.home / "client-home"),
        }


def start_server(
    home: Path,
    *,
    devices: int = 2,
    policy: str = "priority",
    round_seconds: float = 1.0,
    grace: float = 10.0,
    db: str | None = None,
) -> tuple[ServerThread, LiveServer]:
    """Start a service with its API in this process; `db` is its database URL (default: SQLite in `home`)."""
    service = Service(
        ServiceConfig(home=home, devices=devices, policy=policy, round_seconds=round_seconds, grace=grace, db=db)
    )
    service.ensure_admin()
    token = (home / "admin-token").read_text().strip()
    thread = ServerThread(service).start()
    return thread, LiveServer(thread.url, token, home, service)


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:
    """Factory of live servers (stopped at the end of the test); keyword options as start_server."""
    threads: list[ServerThread] = []

    def make(**opts: object) -> LiveServer:
        thread, live = start_server(tmp_path / f"home{len(threads)}", **opts)  # type: ignore[arg-type]
        threads.append(thread)
        return live

    yield make
    for t in threads:
        t.stop()
        for run in list(t.service.executor.runs.values()):  # leave no run behind
            t.service.executor.stop(run.handle, 0)
        _reap(t.service)
        t.service.store.close()  # no connection left open to a database the test drops


def _reap(service: Service) -> None:
    import time

    deadline = time.monotonic() + 15
    while service.executor.running() and time.monotonic() < deadline:
        service.executor.poll()
        time.sleep(0.1)


@pytest.fixture
def server(make_server: Callable[..., LiveServer]) -> LiveServer:
    """A live server with 2 device slots and the priority policy."""
    return make_server()
