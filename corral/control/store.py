"""Persistent state of the service: jobs, their transitions, metrics and users (SQLAlchemy 2).

SQLite in WAL mode by default (readers never block the scheduler's writer),
PostgreSQL by URL. Every state change goes through `Store.transition`, which
writes the new state and its event in the same transaction.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    create_engine,
    event,
    insert,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from corral.control.states import JobState, can_move
from corral.errors import UserError


class Base(DeclarativeBase):
    """Declarative base of corral's tables."""


class User(Base):
    """A user and the hash of their bearer token (the token itself is never stored)."""

    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created: Mapped[float] = mapped_column(Float, default=time.time)


class Job(Base):
    """A submitted job: its spec, where it is in its life, and what it has used."""

    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128))
    user: Mapped[str] = mapped_column(String(64), index=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), index=True, default=JobState.PENDING.value)
    reason: Mapped[str] = mapped_column(String(64), default="")
    priority: Mapped[int] = mapped_column(Integer, default=0)
    min_gpus: Mapped[int] = mapped_column(Integer, default=1)
    max_gpus: Mapped[int] = mapped_column(Integer, default=1)
    gpus: Mapped[int] = mapped_column(Integer, default=1)
    allocation: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    submit_time: Mapped[float] = mapped_column(Float, default=time.time)
    start_time: Mapped[float | None] = mapped_column(Float, nullable=True)  # first start
    run_start: Mapped[float | None] = mapped_column(Float, nullable=True)  # start of the current run
    end_time: Mapped[float | None] = mapped_column(Float, nullable=True)
    attained_service: Mapped[float] = mapped_column(Float, default=0.0)  # device-seconds
    run_time: Mapped[float] = mapped_column(Float, default=0.0)  # seconds running, all runs
    restarts: Mapped[int] = mapped_column(Integer, default=0)  # after failures
    preemptions: Mapped[int] = mapped_column(Integer, default=0)  # by the scheduler
    resizes: Mapped[int] = mapped_column(Integer, default=0)  # elastic jobs restarted at a new size
    attempt: Mapped[int] = mapped_column(Integer, default=0)  # runs started so far
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)  # launcher process of the current run
    last_log: Mapped[str] = mapped_column(Text, default="")
    step: Mapped[int] = mapped_column(Integer, default=0)
    progress: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Hash of the token the current run uses to report metrics (CORRAL_JOB_TOKEN).
    job_token_hash: Mapped[str] = mapped_column(String(64), default="")


class Event(Base):
    """One state transition of a job, with its time and cause."""

    __tablename__ = "events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    time: Mapped[float] = mapped_column(Float, default=time.time)
    src: Mapped[str] = mapped_column(String(16), default="")
    dst: Mapped[str] = mapped_column(String(16))
    cause: Mapped[str] = mapped_column(Text, default="")


class Metric(Base):
    """Metrics a running job reported (loss, accuracy, step time...)."""

    __tablename__ = "metrics"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    time: Mapped[float] = mapped_column(Float, default=time.time)
    step: Mapped[int] = mapped_column(Integer, default=0)
    values: Mapped[dict[str, float]] = mapped_column(JSON)


def default_db_url() -> str:
    """CORRAL_DB, else SQLite at ~/.corral/corral.db."""
    url = os.environ.get("CORRAL_DB")
    if url:
        return url
    home = Path(os.environ.get("CORRAL_HOME", Path.home() / ".corral"))
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'corral.db'}"


def hash_token(token: str) -> str:
    """SHA-256 of a bearer token (tokens are random, so no salt or slow hash is needed)."""
    return hashlib.sha256(token.encode()).hexdigest()


def _make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(conn: Any, _record: Any) -> None:
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


class Store:
    """The service's database: one object per process, sessions per unit of work."""

    def __init__(self, url: str | None = None) -> None:
        self.url = url or default_db_url()
        try:
            self.engine = _make_engine(self.url)
            Base.metadata.create_all(self.engine)
        except Exception as exc:  # a bad URL or an unreachable server
            raise UserError(f"cannot open database {self.url}: {str(exc).splitlines()[0]}") from None
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction: committed when the block ends, rolled back on an exception."""
        with self._sessions.begin() as s:
            yield s

    # -- users ---------------------------------------------------------------

    def create_user(self, name: str, *, admin: bool = False) -> str:
        """Create (or re-key) user `name`; return their new token, shown once."""
        token = secrets.token_urlsafe(24)
        with self.session() as s:
            user = s.scalar(select(User).where(User.name == name))
            if user is None:
                s.add(User(name=name, token_hash=hash_token(token), is_admin=admin))
            else:
                user.token_hash = hash_token(token)
                user.is_admin = user.is_admin or admin
        return token

    def user_for_token(self, token: str) -> User | None:
        """The user whose token this is, or None."""
        with self.session() as s:
            return s.scalar(select(User).where(User.token_hash == hash_token(token)))

    def has_admin(self) -> bool:
        """True once an admin user exists."""
        with self.session() as s:
            return s.scalar(select(User).where(User.is_admin.is_(True))) is not None

    # -- jobs ----------------------------------------------------------------

    def add_job(self, spec: dict[str, Any], user: str) -> Job:
        """Insert a PENDING job and its submit event (Core inserts: the ORM's unit of work costs 10x here)."""
        res = spec.get("resources") or {}
        now = time.time()
        values: dict[str, Any] = dict(
            name=spec["name"], user=user, spec=spec, state=JobState.PENDING.value, reason="Scheduling",
            priority=int(spec.get("priority", 0)), gpus=int(res.get("gpus") or 1),
            min_gpus=int(res.get("min_gpus") or 1), max_gpus=int(res.get("max_gpus") or 1), allocation={},
            submit_time=now, start_time=None, run_start=None, end_time=None, attained_service=0.0, run_time=0.0,
            restarts=0, preemptions=0, resizes=0, attempt=0, exit_code=None, pid=None, last_log="", step=0,
            progress=None, job_token_hash="",
        )
        with self.engine.begin() as conn:
            job_id = conn.execute(insert(Job.__table__).values(**values)).inserted_primary_key[0]
            conn.execute(insert(Event.__table__).values(job_id=job_id, time=now, src="", dst=JobState.PENDING.value,
                                                        cause="submitted"))
        return Job(id=job_id, **values)

    def get_job(self, job_id: int) -> Job | None:
        """The job with this id, or None."""
        with self.session() as s:
            return s.get(Job, job_id)

    def list_jobs(self, *, states: Sequence[str] | None = None, user: str | None = None,
                  limit: int = 1000) -> list[Job]:
        """Jobs, newest first, optionally filtered by state and user."""
        q = select(Job).order_by(Job.id.desc()).limit(limit)
        if states:
            q = q.where(Job.state.in_(list(states)))
        if user:
            q = q.where(Job.user == user)
        with self.session() as s:
            return list(s.scalars(q))

    def events(self, job_id: int) -> list[Event]:
        """The job's transitions, oldest first."""
        with self.session() as s:
            return list(s.scalars(select(Event).where(Event.job_id == job_id).order_by(Event.id)))

    def transition(self, s: Session, job: Job, dst: JobState, cause: str, *, now: float | None = None) -> None:
        """Move `job` to `dst` inside session `s`, recording the event; refuse an impossible move."""
        src = JobState(job.state)
        if src == dst:
            return
        if not can_move(src, dst):
            raise ValueError(f"job {job.id}: {src.value} -> {dst.value} is not a valid transition ({cause})")
        now = time.time() if now is None else now
        job.state = dst.value
        s.add(Event(job_id=job.id, time=now, src=src.value, dst=dst.value, cause=cause))

    def add_metrics(self, job_id: int, step: int, values: dict[str, float]) -> None:
        """Record metrics a job reported."""
        with self.session() as s:
            s.add(Metric(job_id=job_id, step=step, values=values, time=time.time()))
            job = s.get(Job, job_id)
            if job is not None:
                job.step = max(job.step, step)
                if "progress" in values:
                    job.progress = float(values["progress"])

    def add_metrics_batch(self, job_id: int, records: Sequence[tuple[int, dict[str, float], float | None]]) -> None:
        """Record several (step, values, time) reports of a job in one transaction."""
        now = time.time()
        with self.session() as s:
            for step, values, t in records:
                s.add(Metric(job_id=job_id, step=step, values=values, time=t or now))
            job = s.get(Job, job_id)
            if job is not None and records:
                job.step = max(job.step, max(r[0] for r in records))
                progress = [r[1]["progress"] for r in records if "progress" in r[1]]
                if progress:
                    job.progress = float(progress[-1])

    def metrics(self, job_id: int) -> list[Metric]:
        """A job's reported metrics, oldest first."""
        with self.session() as s:
            return list(s.scalars(select(Metric).where(Metric.job_id == job_id).order_by(Metric.id)))


def dumps(obj: Any) -> str:
    """JSON for values stored or returned (sorted keys, compact)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))
