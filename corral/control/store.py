"""Persistent state of the service: jobs, their transitions, metrics and users (SQLAlchemy 2).

SQLite in WAL mode by default (readers never block the scheduler's writer),
PostgreSQL by URL (`postgresql://...`, with psycopg 3). Every state change goes through
`Store.transition`, which writes the new state and its event in the same transaction.
The schema is Alembic's (corral.control.migrations): opening a store upgrades its database.
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
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Integer,
    String,
    Table,
    Text,
    TypeDecorator,
    create_engine,
    event,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Dialect, Engine, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from corral.control import migrations
from corral.control.states import JobState, can_move
from corral.errors import UserError


class Base(DeclarativeBase):
    """Declarative base of corral's tables."""


# Ids of rows that accumulate (jobs, events, metrics): 64-bit. PostgreSQL's INTEGER is 32-bit (metrics
# reported every second overflow it within months); SQLite's INTEGER PRIMARY KEY is 64-bit already and
# must stay spelled INTEGER to remain the autoincrementing rowid.
BigId = BigInteger().with_variant(Integer, "sqlite")
MAX_ID = 2**63 - 1


class CleanText(TypeDecorator[str]):
    """Text with NUL characters replaced (U+FFFD): PostgreSQL's text refuses them, a job's output may hold them."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return value.replace("\x00", "\ufffd") if value and "\x00" in value else value


class User(Base):
    """A user and the hash of their bearer token (the token itself is never stored)."""

    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created: Mapped[float] = mapped_column(Float, default=time.time)
    # When the token stops working (epoch seconds); None: never. A revoked token's hash is replaced.
    token_expires: Mapped[float | None] = mapped_column(Float, nullable=True)
    group_name: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    # Limits (None: none): devices held at once, jobs waiting at once, the highest priority a job may ask.
    max_devices: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_queued: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_priority: Mapped[int | None] = mapped_column(Integer, nullable=True)
    share: Mapped[float] = mapped_column(Float, default=1.0, server_default="1")  # fair-share weight


class Group(Base):
    """A group of users (a lab, a team): limits that count all its members' jobs together, and a share."""

    __tablename__ = "groups"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    max_devices: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_queued: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_priority: Mapped[int | None] = mapped_column(Integer, nullable=True)
    share: Mapped[float] = mapped_column(Float, default=1.0, server_default="1")
    created: Mapped[float] = mapped_column(Float, default=time.time)


class Job(Base):
    """A submitted job: its spec, where it is in its life, and what it has used."""

    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
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
    # The executor's opaque name of the current run (RunHandle.ref); "" when none.
    run_ref: Mapped[str] = mapped_column(String(256), default="")
    # What the scheduler has asked the executor to do and not yet seen done, written
    # (and committed) BEFORE the executor acts, so a restarted service knows:
    # "" | start | preempt | resize | cancel | timeout. `reason` is display text only.
    intent: Mapped[str] = mapped_column(String(16), default="")
    intent_time: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Run time and attained service are counted up to this time (never twice, even across restarts).
    accounted_until: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_log: Mapped[str] = mapped_column(CleanText, default="")
    step: Mapped[int] = mapped_column(Integer, default=0)
    # Step times the job reported, by configuration: {"nodes,replicas,local_batch": [mean s, reports]};
    # the scheduler fits the job's throughput model from them (corral.control.views).
    observations: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    progress: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Hash of the token the current run uses to report metrics (CORRAL_JOB_TOKEN).
    job_token_hash: Mapped[str] = mapped_column(String(64), default="")
    # Jobs of one array share array_id (the id of its first element); array_index is the element's index.
    array_id: Mapped[int | None] = mapped_column(BigId, nullable=True, index=True)
    array_index: Mapped[int | None] = mapped_column(Integer, nullable=True)


class Event(Base):
    """One state transition of a job, with its time and cause."""

    __tablename__ = "events"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(BigId, ForeignKey("jobs.id"), index=True)
    time: Mapped[float] = mapped_column(Float, default=time.time)
    src: Mapped[str] = mapped_column(String(16), default="")
    dst: Mapped[str] = mapped_column(String(16))
    cause: Mapped[str] = mapped_column(CleanText, default="")
    # Structured facts of the transition (e.g. {"allocation": {node: [devices]}}); `cause` is for people.
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class Metric(Base):
    """Metrics a running job reported (loss, accuracy, step time...)."""

    __tablename__ = "metrics"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(BigId, ForeignKey("jobs.id"), index=True)
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


def _json(obj: Any) -> str:
    # NaN and infinities are not JSON: PostgreSQL refuses them, so SQLite does too (same behaviour on both).
    return json.dumps(obj, allow_nan=False)


def _make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, json_serializer=_json)

        @event.listens_for(engine, "connect")
        def _pragmas(conn: Any, _record: Any) -> None:
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):  # no driver named: psycopg 3, the one corral installs
        parsed = parsed.set(drivername="postgresql+psycopg")
    return create_engine(parsed, pool_pre_ping=True, json_serializer=_json)


class Store:
    """The service's database: one object per process, sessions per unit of work."""

    def __init__(self, url: str | None = None) -> None:
        self.url = url or default_db_url()
        try:
            self.engine = _make_engine(self.url)
            migrations.upgrade(self.engine)
        except Exception as exc:  # a bad URL, an unreachable server, a schema newer than this code
            raise UserError(f"cannot open database {self.url}: {str(exc).splitlines()[0]}") from None
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def close(self) -> None:
        """Close the store's connections (the object is not used afterwards)."""
        self.engine.dispose()

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction: committed when the block ends, rolled back on an exception."""
        with self._sessions.begin() as s:
            yield s

    # -- users ---------------------------------------------------------------

    def create_user(self, name: str, *, admin: bool = False) -> str:
        """Create (or re-key) user `name`; return their new token, shown once."""
        return self.create_or_rekey_user(name, admin=admin)[0]

    def create_or_rekey_user(self, name: str, *, admin: bool = False, expires: float | None = None) -> tuple[str, bool]:
        """Create user `name`, or give the existing one a new token (the old one stops working).

        Returns the new token (shown once) and whether the user is an admin *as stored*: a
        re-key may promote (`admin=True`) but never demotes. `expires` (epoch seconds, None:
        never) is when the new token stops working. Two creations of one new name at
        once race on the unique name; the loser re-keys the row the winner inserted, exactly as
        if it had come second, so neither fails (no IntegrityError escapes) and the token
        returned last is the valid one.
        """
        for attempt in range(2):
            token = secrets.token_urlsafe(24)
            try:
                with self.session() as s:
                    user = s.scalar(select(User).where(User.name == name))
                    if user is None:
                        user = User(name=name, token_hash=hash_token(token), is_admin=admin, token_expires=expires)
                        s.add(user)
                    else:
                        user.token_hash = hash_token(token)
                        user.is_admin = user.is_admin or admin
                        user.token_expires = expires
                    s.flush()
                    is_admin = bool(user.is_admin)
                return token, is_admin
            except IntegrityError:
                if attempt:  # the name exists now, so a second try re-keys it; this is not that race
                    raise
        raise AssertionError("unreachable")

    def user_for_token(self, token: str) -> User | None:
        """The user whose token this is, or None."""
        with self.session() as s:
            return s.scalar(select(User).where(User.token_hash == hash_token(token)))

    def revoke_token(self, name: str) -> bool:
        """End user `name`'s token: its hash is replaced by that of a secret nobody holds. False: no such user."""
        with self.session() as s:
            user = s.scalar(select(User).where(User.name == name))
            if user is None:
                return False
            user.token_hash = hash_token(secrets.token_urlsafe(32))
            user.token_expires = None
            return True

    def get_user(self, name: str) -> User | None:
        """User `name`, or None."""
        with self.session() as s:
            return s.scalar(select(User).where(User.name == name))

    def admins(self) -> list[str]:
        """Names of the admins."""
        with self.session() as s:
            return list(s.scalars(select(User.name).where(User.is_admin.is_(True))))

    def has_admin(self) -> bool:
        """True once an admin user exists."""
        with self.session() as s:
            return s.scalar(select(User).where(User.is_admin.is_(True))) is not None

    # -- jobs ----------------------------------------------------------------

    def add_job(self, spec: dict[str, Any], user: str) -> Job:
        """Insert a PENDING job and its submit event (Core inserts: the ORM's unit of work costs 10x here)."""
        return self.add_jobs([spec], user)[0]

    def add_jobs(
        self, specs: Sequence[dict[str, Any]], user: str, *, array_indices: Sequence[int] | None = None
    ) -> list[Job]:
        """Insert PENDING jobs and their submit events in one transaction (all or none).

        With `array_indices`, they are one array: each gets array_id = the first one's id and its index.
        """
        array = array_indices is not None
        now = time.time()
        jobs: list[Job] = []
        with self.engine.begin() as conn:
            first: int | None = None
            for i, spec in enumerate(specs):
                values = _new_job(spec, user, now)
                if array:
                    values["array_index"] = int(array_indices[i])  # type: ignore[index]
                    values["array_id"] = first
                job_id = conn.execute(insert(cast(Table, Job.__table__)).values(**values)).inserted_primary_key[0]  # type: ignore[index]
                if array and first is None:
                    first = values["array_id"] = job_id
                    conn.execute(update(Job).where(Job.id == job_id).values(array_id=job_id))
                conn.execute(
                    insert(cast(Table, Event.__table__)).values(
                        job_id=job_id, time=now, src="", dst=JobState.PENDING.value, cause="submitted", data={}
                    )
                )
                jobs.append(Job(id=job_id, **values))
        return jobs

    def get_job(self, job_id: int) -> Job | None:
        """The job with this id, or None."""
        if not 0 < job_id <= MAX_ID:  # no such row, and PostgreSQL refuses to compare an id with it
            return None
        with self.session() as s:
            return s.get(Job, job_id)

    def jobs_by_ids(self, ids: Sequence[int]) -> list[Job]:
        """The jobs with these ids (unknown ids are left out), by id."""
        ids = sorted({i for i in ids if 0 < i <= MAX_ID})
        out: list[Job] = []
        with self.session() as s:
            for start in range(0, len(ids), 500):
                out += s.scalars(select(Job).where(Job.id.in_(ids[start : start + 500])).order_by(Job.id))
        return out

    def existing_job_ids(self, ids: Sequence[int]) -> set[int]:
        """Which of `ids` name a job."""
        ids = [i for i in ids if 0 < i <= MAX_ID]
        if not ids:
            return set()
        with self.session() as s:
            return set(s.scalars(select(Job.id).where(Job.id.in_(ids))))

    def list_jobs(
        self,
        *,
        states: Sequence[str] | None = None,
        user: str | None = None,
        name: str | None = None,
        array: int | None = None,
        limit: int = 1000,
    ) -> list[Job]:
        """Jobs, newest first, optionally filtered by state, user, name and array."""
        q = select(Job).order_by(Job.id.desc()).limit(limit)
        if states:
            q = q.where(Job.state.in_(list(states)))
        if user:
            q = q.where(Job.user == user)
        if name:
            q = q.where(Job.name == name)
        if array is not None:
            q = q.where(Job.array_id == array) if 0 < array <= MAX_ID else q.where(Job.id < 0)
        with self.session() as s:
            return list(s.scalars(q))

    def events(self, job_id: int) -> list[Event]:
        """The job's transitions, oldest first."""
        with self.session() as s:
            return list(s.scalars(select(Event).where(Event.job_id == job_id).order_by(Event.id)))

    def transition(
        self,
        s: Session,
        job: Job,
        dst: JobState,
        cause: str,
        *,
        now: float | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        """Move `job` to `dst` inside session `s`, recording the event; refuse an impossible move."""
        src = JobState(job.state)
        if src == dst:
            return
        if not can_move(src, dst):
            raise ValueError(f"job {job.id}: {src.value} -> {dst.value} is not a valid transition ({cause})")
        now = time.time() if now is None else now
        job.state = dst.value
        s.add(Event(job_id=job.id, time=now, src=src.value, dst=dst.value, cause=cause, data=data or {}))

    def add_metrics(self, job_id: int, step: int, values: dict[str, float]) -> None:
        """Record metrics a job reported."""
        self.add_metrics_batch(job_id, [(step, values, None)])

    def add_metrics_batch(self, job_id: int, records: Sequence[tuple[int, dict[str, float], float | None]]) -> None:
        """Record several (step, values, time) reports of a job in one transaction."""
        now = time.time()
        with self.session() as s:
            # The job's row locked first (PostgreSQL; SQLite ignores FOR UPDATE): two batches at once
            # would otherwise both read the same observations and one would lose its update.
            job = s.get(Job, job_id, with_for_update=True)
            for step, values, t in records:
                s.add(Metric(job_id=job_id, step=step, values=values, time=t or now))
            if job is not None and records:
                job.step = max(job.step, max(r[0] for r in records))
                progress = [r[1]["progress"] for r in records if "progress" in r[1]]
                if progress:
                    job.progress = float(progress[-1])
                observed = observe_step_times(job.observations or {}, [r[1] for r in records])
                if observed is not None:
                    job.observations = observed

    def metrics(self, job_id: int) -> list[Metric]:
        """A job's reported metrics, oldest first."""
        with self.session() as s:
            return list(s.scalars(select(Metric).where(Metric.job_id == job_id).order_by(Metric.id)))


OBSERVATIONS_KEPT = 8  # reports averaged per configuration; later ones leave the fit alone (no refit churn)
EFFICIENCY_KEY = "efficiency"  # the observations' entry for the latest gradient statistics
EFFICIENCY_FIELDS = ("noise_scale", "init_batch", "max_batch", "max_local_batch")


def observe_step_times(observed: dict[str, Any], reports: Sequence[dict[str, float]]) -> dict[str, Any] | None:
    """`observed` with `reports` folded in; None if unchanged.

    Seconds per micro-step are averaged by (nodes, replicas, local batch) under the key
    "nodes,replicas,local"; the latest noise scale (already smoothed by the job) and, for an
    adaptive batch, its bounds go under EFFICIENCY_KEY.
    """
    out: dict[str, Any] | None = None
    for values in reports:
        stats = _efficiency(values)
        if stats is not None and stats != observed.get(EFFICIENCY_KEY):
            out = dict(observed) if out is None else out
            out[EFFICIENCY_KEY] = stats
        try:
            # A step of k accumulated micro-steps: the model's unit is one micro-step (one local batch).
            t = float(values["step_time"]) / max(1.0, float(values.get("accum_steps", 1)))
            key = f"{int(values.get('nodes', 1))},{int(values['replicas'])},{int(values['local_batch'])}"
        except (KeyError, TypeError, ValueError):
            continue
        if not (t > 0 and t < 1e6):
            continue
        cur = (out if out is not None else observed).get(key, [0.0, 0])
        mean, n = float(cur[0]), int(cur[1])
        if n >= OBSERVATIONS_KEPT:
            continue
        if out is None:
            out = dict(observed)
        out[key] = [(mean * n + t) / (n + 1), n + 1]
    return out


def _efficiency(values: dict[str, float]) -> dict[str, float] | None:
    """The gradient statistics of one report (noise scale, adaptive-batch bounds), or None."""
    try:
        phi = float(values["noise_scale"])
    except (KeyError, TypeError, ValueError):
        return None
    if not (phi >= 0 and phi < 1e12):
        return None
    # Three significant digits: the scheduler's model (and its cached tables) changes only when phi does.
    stats = {"noise_scale": float(f"{phi:.3g}")}
    for name in EFFICIENCY_FIELDS[1:]:
        try:
            v = float(values[name])
        except (KeyError, TypeError, ValueError):
            continue
        if v >= 1 and v < 1e12:
            stats[name] = v
    return stats


def _new_job(spec: dict[str, Any], user: str, now: float) -> dict[str, Any]:
    """The column values of a new PENDING job."""
    res = spec.get("resources") or {}
    return dict(
        name=spec["name"],
        user=user,
        spec=spec,
        state=JobState.PENDING.value,
        reason="Scheduling",
        priority=int(spec.get("priority", 0)),
        gpus=int(res.get("gpus") or 1),
        min_gpus=int(res.get("min_gpus") or 1),
        max_gpus=int(res.get("max_gpus") or 1),
        allocation={},
        submit_time=now,
        start_time=None,
        run_start=None,
        end_time=None,
        attained_service=0.0,
        run_time=0.0,
        restarts=0,
        preemptions=0,
        resizes=0,
        attempt=0,
        exit_code=None,
        run_ref="",
        intent="",
        intent_time=None,
        accounted_until=None,
        observations={},
        last_log="",
        step=0,
        progress=None,
        job_token_hash="",
        array_id=None,
        array_index=None,
    )


def dumps(obj: Any) -> str:
    """JSON for values stored or returned (sorted keys, compact)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))
