"""The HTTP API of the service (FastAPI): jobs, logs, metrics, cluster, users, Prometheus and the dashboard.

Every route under /api/v1 needs a bearer token. Errors a client can cause
come back as a 4xx with one line in `detail`; nothing in the store changes.
"""

# No `from __future__ import annotations`: FastAPI must resolve the
# dependency aliases defined inside create_app at definition time.
import asyncio
import time
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select

from corral.control.spec import JobSpec
from corral.control.states import JobState
from corral.control.store import Job, Metric, User, hash_token
from corral.errors import UserError

if TYPE_CHECKING:  # the service imports nothing from here; typing only
    from corral.control.service import Service

API = "/api/v1"
MAX_LIMIT = 10_000
FOLLOW_POLL = 0.2  # seconds between reads of a followed log
TOKEN_CACHE_S = 5.0


# -- response models (they make /docs and /openapi.json useful) ---------------------


class JobOut(BaseModel):
    """A job as the API shows it."""

    id: int
    name: str
    user: str
    state: str
    reason: str
    priority: int
    gpus: int
    min_gpus: int
    max_gpus: int
    devices: list[str]
    submit_time: float
    start_time: float | None
    end_time: float | None
    queue_time: float | None = Field(description="Seconds from submit to the first start")
    run_time: float
    attained_service: float
    restarts: int
    preemptions: int
    resizes: int
    attempt: int
    exit_code: int | None
    step: int
    progress: float | None
    last_log: str
    spec: dict[str, Any]


class JobList(BaseModel):
    """Jobs, newest first."""

    jobs: list[JobOut]


class EventOut(BaseModel):
    """One state transition."""

    time: float
    src: str
    dst: str
    cause: str


class EventList(BaseModel):
    """A job's transitions, oldest first."""

    events: list[EventOut]


class MetricOut(BaseModel):
    """Metrics a job reported at one step."""

    time: float
    step: int
    values: dict[str, float]


class MetricList(BaseModel):
    """A job's reported metrics, oldest first."""

    metrics: list[MetricOut]


class MetricIn(BaseModel):
    """Metrics a running job reports (rank 0, through the Job API)."""

    model_config = ConfigDict(extra="forbid")

    step: int = Field(ge=0, le=2**62)
    values: dict[str, float] = Field(max_length=64)
    time: float | None = Field(default=None, ge=0, le=1e11)


class MetricBatch(BaseModel):
    """Several reports in one request."""

    model_config = ConfigDict(extra="forbid")

    records: list[MetricIn] = Field(min_length=1, max_length=1000)


class DeviceOut(BaseModel):
    """One device slot and the job on it, if any."""

    node: str
    device: int
    job_id: int | None
    job_name: str | None
    user: str | None


class ClusterOut(BaseModel):
    """Devices and what runs on them."""

    total: int
    used: int
    devices: list[DeviceOut]
    policy: str
    pending: int
    running: int


class UserIn(BaseModel):
    """A user to create (or re-key)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    admin: bool = False


class TokenOut(BaseModel):
    """A new token, shown once."""

    name: str
    token: str
    admin: bool


class WhoAmI(BaseModel):
    """The caller."""

    name: str
    admin: bool


class Health(BaseModel):
    """Liveness of the service."""

    status: str
    version: str


def job_out(job: Job, now: float | None = None) -> JobOut:
    """The API view of a stored job."""
    devices = [f"{node}:{d}" for node, devs in sorted((job.allocation or {}).items()) for d in devs]
    return JobOut(
        id=job.id, name=job.name, user=job.user, state=job.state, reason=job.reason or "", priority=job.priority,
        gpus=job.gpus, min_gpus=job.min_gpus, max_gpus=job.max_gpus, devices=devices,
        submit_time=job.submit_time, start_time=job.start_time, end_time=job.end_time,
        queue_time=(job.start_time - job.submit_time) if job.start_time else None,
        run_time=job.run_time, attained_service=job.attained_service, restarts=job.restarts,
        preemptions=job.preemptions, resizes=job.resizes or 0, attempt=job.attempt, exit_code=job.exit_code,
        step=job.step, progress=job.progress, last_log=job.last_log or "", spec=job.spec or {},
    )


def _one_line_validation(exc: RequestValidationError) -> str:
    err = exc.errors()[0]
    loc = [str(p) for p in err.get("loc", ()) if p != "body"]
    where = ".".join(loc) or "body"
    msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    if err.get("type") == "extra_forbidden":
        msg = "unknown field"
    more = len(exc.errors()) - 1
    return f"{where}: {msg}" + (f" (and {more} more)" if more else "")


class _StoreCollector:
    """Prometheus collector that reads the store at scrape time (no counters to keep in sync)."""

    def __init__(self, service: "Service") -> None:
        self.service = service

    def collect(self) -> Any:
        svc = self.service
        with svc.store.session() as s:
            by_state = dict(s.execute(select(Job.state, func.count()).group_by(Job.state)).all())
            totals = s.execute(select(func.coalesce(func.sum(Job.preemptions), 0),
                                      func.coalesce(func.sum(Job.restarts), 0),
                                      func.coalesce(func.sum(Job.resizes), 0))).one()
            running = list(s.scalars(select(Job).where(Job.state.in_([JobState.RUNNING.value,
                                                                        JobState.RESTARTING.value]))))
        jobs = GaugeMetricFamily("corral_jobs", "Jobs by state", labels=["state"])
        for state in JobState:
            jobs.add_metric([state.value], by_state.get(state.value, 0))
        yield jobs
        yield GaugeMetricFamily("corral_devices_total", "Device slots the executor hands out",
                                value=svc.total_devices())
        used = sum(len(d) for j in running for d in (j.allocation or {}).values())
        yield GaugeMetricFamily("corral_devices_used", "Device slots held by running jobs", value=used)
        yield GaugeMetricFamily("corral_preemptions", "Preemptions of all jobs so far", value=totals[0])
        yield GaugeMetricFamily("corral_restarts", "Restarts after failures of all jobs so far", value=totals[1])
        yield GaugeMetricFamily("corral_resizes", "Elastic resizes of all jobs so far", value=totals[2])
        yield GaugeMetricFamily("corral_scheduler_rounds", "Scheduling rounds run since start", value=svc.rounds)
        yield GaugeMetricFamily("corral_scheduler_round_seconds", "Duration of the last scheduling round",
                                value=svc.last_round_seconds)


def create_app(service: "Service") -> FastAPI:
    """The FastAPI application of one service."""
    app = FastAPI(title="corral", version="1", description="Schedules and runs distributed training jobs.")
    bearer = HTTPBearer(auto_error=False)
    registry = CollectorRegistry()
    registry.register(_StoreCollector(service))  # type: ignore[arg-type]
    store = service.store

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _one_line_validation(exc)}, status_code=422)

    @app.exception_handler(UserError)
    async def _user_error(_: Request, exc: UserError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    # Token -> user, kept a few seconds: every request is authenticated, and a
    # database read per request halves the submission rate on SQLite. A
    # re-keyed user's old token therefore works for up to TOKEN_CACHE_S more.
    cache: dict[str, tuple[float, User]] = {}

    def lookup(token: str) -> User | None:
        now = time.monotonic()
        hit = cache.get(token)
        if hit is not None and now - hit[0] < TOKEN_CACHE_S:
            return hit[1]
        user = store.user_for_token(token)
        if user is not None:
            if len(cache) > 1000:
                cache.clear()
            cache[token] = (now, user)
        return user

    def current_user(cred: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> User:
        if cred is None or not cred.credentials:
            raise HTTPException(401, "missing token: send 'Authorization: Bearer TOKEN' "
                                     "(the CLI reads --token, CORRAL_TOKEN or ~/.corral/token)",
                                headers={"WWW-Authenticate": "Bearer"})
        user = lookup(cred.credentials)
        if user is None:
            raise HTTPException(401, "invalid token", headers={"WWW-Authenticate": "Bearer"})
        return user

    Caller = Annotated[User, Depends(current_user)]
    def get_job(job_id: int) -> Job:
        job = store.get_job(job_id) if 0 < job_id < 2**62 else None
        if job is None:
            raise HTTPException(404, f"no job with id {job_id}")
        return job

    def owned(job: Job, user: User, action: str) -> None:
        if job.user != user.name and not user.is_admin:
            raise HTTPException(403, f"job {job.id} belongs to {job.user}; only they or an admin may {action}")

    # -- service -------------------------------------------------------------

    @app.get(f"{API}/health", response_model=Health, tags=["service"])
    def health() -> Health:
        """Liveness (no token needed)."""
        from corral import __version__

        return Health(status="ok", version=__version__)

    @app.get(f"{API}/whoami", response_model=WhoAmI, tags=["users"])
    def whoami(user: Caller) -> WhoAmI:
        """The user the token belongs to."""
        return WhoAmI(name=user.name, admin=user.is_admin)

    @app.post(f"{API}/users", response_model=TokenOut, status_code=201, tags=["users"])
    def create_user(body: UserIn, user: Caller) -> TokenOut:
        """Create a user (or give an existing one a new token). Admins only."""
        if not user.is_admin:
            raise HTTPException(403, "only an admin may create tokens")
        token = store.create_user(body.name, admin=body.admin)
        return TokenOut(name=body.name, token=token, admin=body.admin)

    # -- jobs ----------------------------------------------------------------

    @app.post(f"{API}/jobs", response_model=JobOut, status_code=201, tags=["jobs"])
    def submit(spec: JobSpec, user: Caller) -> JobOut:
        """Queue a job; refused (422) when it could never fit the cluster."""
        return job_out(service.submit(spec, user.name))

    @app.get(f"{API}/jobs", response_model=JobList, tags=["jobs"])
    def list_jobs(user: Caller, state: Annotated[list[JobState] | None, Query()] = None,
                  owner: Annotated[str | None, Query(alias="user", max_length=64)] = None,
                  limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 1000) -> JobList:
        """Jobs, newest first, filtered by state (repeatable) and user."""
        jobs = store.list_jobs(states=[s.value for s in state] if state else None, user=owner, limit=limit)
        now = time.time()
        return JobList(jobs=[job_out(j, now) for j in jobs])

    @app.get(f"{API}/jobs/{{job_id}}", response_model=JobOut, tags=["jobs"])
    def describe(job_id: int, user: Caller) -> JobOut:
        """One job."""
        return job_out(get_job(job_id))

    @app.post(f"{API}/jobs/{{job_id}}/cancel", response_model=JobOut, tags=["jobs"])
    def cancel(job_id: int, user: Caller) -> JobOut:
        """Cancel a job: a waiting one at once, a running one after its ranks stop. Owner or admin."""
        job = get_job(job_id)
        owned(job, user, "cancel it")
        if JobState(job.state).is_terminal:
            raise HTTPException(409, f"job {job_id} already ended ({job.state})")
        service.cancel(job_id)
        return job_out(get_job(job_id))

    @app.get(f"{API}/jobs/{{job_id}}/events", response_model=EventList, tags=["jobs"])
    def events(job_id: int, user: Caller) -> EventList:
        """Every state transition of a job, with its time and cause."""
        get_job(job_id)
        return EventList(events=[EventOut(time=e.time, src=e.src, dst=e.dst, cause=e.cause)
                                 for e in store.events(job_id)])

    @app.get(f"{API}/jobs/{{job_id}}/metrics", response_model=MetricList, tags=["jobs"])
    def metrics(job_id: int, user: Caller) -> MetricList:
        """Metrics the job reported (loss, accuracy, samples/s...)."""
        get_job(job_id)
        return MetricList(metrics=[MetricOut(time=m.time, step=m.step, values=m.values)
                                   for m in store.metrics(job_id)])

    @app.post(f"{API}/jobs/{{job_id}}/metrics", status_code=204, tags=["jobs"])
    def report(job_id: int, body: MetricBatch,
               cred: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
        """Record metrics from a running job: its CORRAL_JOB_TOKEN, or the owner's token."""
        if cred is None or not cred.credentials:
            raise HTTPException(401, "missing token", headers={"WWW-Authenticate": "Bearer"})
        job = get_job(job_id)
        if not job.job_token_hash or hash_token(cred.credentials) != job.job_token_hash:
            user = lookup(cred.credentials)
            if user is None:
                raise HTTPException(401, "invalid token", headers={"WWW-Authenticate": "Bearer"})
            owned(job, user, "report its metrics")
        store.add_metrics_batch(job_id, [(r.step, r.values, r.time) for r in body.records])

    @app.get(f"{API}/jobs/{{job_id}}/logs", tags=["jobs"], response_class=PlainTextResponse,
             responses={200: {"content": {"text/plain": {}}, "description": "Log text from `offset`"}})
    def logs(job_id: int, user: Caller, rank: Annotated[int | None, Query(ge=0, le=4096)] = None,
             follow: bool = False, offset: Annotated[int, Query(ge=0, le=2**62)] = 0) -> Any:
        """A job's output: all ranks prefixed (no rank) or one rank; `follow` streams until the job ends."""
        job = get_job(job_id)
        owned(job, user, "read its logs")
        path = service.log_path(job_id, rank)
        if not follow:
            data = _read_from(path, offset)
            return PlainTextResponse(data.decode(errors="replace"), headers={"X-Corral-Offset": str(offset + len(data))})

        async def stream() -> Any:
            pos = offset
            while True:
                chunk = _read_from(path, pos)
                pos += len(chunk)
                # Whole lines only: a line still being written is sent once complete.
                cut = chunk.rfind(b"\n") + 1
                if cut < len(chunk):
                    pos -= len(chunk) - cut
                    chunk = chunk[:cut]
                if chunk:
                    yield chunk
                if JobState(store.get_job(job_id).state).is_terminal:  # type: ignore[union-attr]
                    rest = _read_from(path, pos)  # what was written before it ended
                    if rest:
                        yield rest
                    return
                await asyncio.sleep(FOLLOW_POLL)

        return StreamingResponse(stream(), media_type="text/plain")

    # -- cluster -------------------------------------------------------------

    @app.get(f"{API}/cluster", response_model=ClusterOut, tags=["cluster"])
    def cluster(user: Caller) -> ClusterOut:
        """Every device and the job on it."""
        view = service.executor.cluster()
        running = store.list_jobs(states=[JobState.RUNNING.value, JobState.RESTARTING.value])
        owner: dict[tuple[str, int], Job] = {}
        for job in running:
            for node, devs in (job.allocation or {}).items():
                for d in devs:
                    owner[node, int(d)] = job
        devices = []
        for node in view.nodes:
            for d in range(node.num_devices):
                j = owner.get((node.name, d))
                devices.append(DeviceOut(node=node.name, device=d, job_id=j.id if j else None,
                                         job_name=j.name if j else None, user=j.user if j else None))
        pending = len(store.list_jobs(states=[JobState.PENDING.value], limit=MAX_LIMIT))
        return ClusterOut(total=len(devices), used=len(owner), devices=devices, policy=service.scheduler.policy.name,
                          pending=pending, running=len(running))

    # -- Prometheus and the dashboard ---------------------------------------------

    @app.get("/metrics", response_class=PlainTextResponse, tags=["service"])
    def prometheus() -> PlainTextResponse:
        """Prometheus exposition of jobs by state, devices and scheduler rounds."""
        return PlainTextResponse(generate_latest(registry).decode(), media_type="text/plain; version=0.0.4")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def dashboard() -> HTMLResponse:
        return HTMLResponse(resources.files("corral.control").joinpath("static/dashboard.html").read_text())

    return app


def _read_from(path: Path, offset: int, limit: int = 1 << 20) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(limit)
    except OSError:
        return b""
