"""What the API sends and accepts: pydantic models (they make /docs and /openapi.json useful) and `job_out`."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat

from corral.control.arrays import MAX_ARRAY
from corral.control.spec import JobSpec
from corral.control.states import JobState
from corral.control.store import Job, User
from corral.control.views import model_description

REDACTED = "***"  # what a job's env values read as to anyone but its owner and admins
MAX_TOKEN_LIFETIME_S = 10 * 365 * 86400.0  # the longest `expires_in` a token may be given


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
    model: str = Field(description="What the scheduler knows of the job's scaling: its fitted model, or the default")
    last_log: str = Field(description='The last lines of a failed run (owner and admins only; "" to others)')
    spec: dict[str, Any] = Field(
        description="The spec as submitted; `env` values are redacted for others than the owner and admins"
    )
    array_id: int | None = Field(default=None, description="The id of the array's first job, if it is in one")
    array_index: int | None = None
    array_size: int | None = Field(default=None, description="At submit: jobs the array made (first shown)")


class JobList(BaseModel):
    """Jobs, newest first."""

    jobs: list[JobOut]


class JobBatch(BaseModel):
    """Jobs to queue together: all or none."""

    model_config = ConfigDict(extra="forbid")

    jobs: list[JobSpec] = Field(min_length=1, max_length=MAX_ARRAY)


class CancelIn(BaseModel):
    """Which jobs to cancel: ids, or filters (all given must match); at least one. Others' jobs: admins only."""

    model_config = ConfigDict(extra="forbid")

    ids: list[Annotated[int, Field(ge=1, le=2**62)]] = Field(default_factory=list, max_length=100_000)
    user: str | None = Field(default=None, min_length=1, max_length=64)
    state: list[JobState] = Field(default_factory=list)
    name: str | None = Field(default=None, min_length=1, max_length=128)
    array: int | None = Field(default=None, ge=1, le=2**62)


class CancelOut(BaseModel):
    """The ids of the jobs that were still active and are now cancelled (or being stopped)."""

    cancelled: list[int]


class EventOut(BaseModel):
    """One state transition."""

    time: float
    src: str
    dst: str
    cause: str
    # Structured facts of the transition: allocation and attempt when it starts running,
    # kind (preempt, resize, lost) when it stops, exit_code when it fails.
    data: dict[str, Any] = Field(default_factory=dict)


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
    """Metrics a running job reports (rank 0, through the Job API); values are finite (no NaN, no infinity)."""

    model_config = ConfigDict(extra="forbid")

    step: int = Field(ge=0, le=2**62)
    values: dict[str, FiniteFloat] = Field(max_length=64)
    time: float | None = Field(default=None, ge=0, le=1e11, allow_inf_nan=False)


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


class NodeOut(BaseModel):
    """One node of the cluster the executor sees: its name, device count and labels."""

    name: str
    devices: int
    labels: dict[str, str]


class ClusterOut(BaseModel):
    """Devices and what runs on them."""

    total: int
    used: int
    devices: list[DeviceOut]
    nodes: list[NodeOut] = []
    policy: str
    pending: int
    running: int


class UserIn(BaseModel):
    """A user to create (or re-key)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    admin: bool = False
    # Seconds from now until the new token stops working; None: never (up to ten years).
    expires_in: FiniteFloat | None = Field(None, gt=0, le=MAX_TOKEN_LIFETIME_S, strict=True)


class TokenOut(BaseModel):
    """A new token, shown once, and whether its user is an admin (as stored: a re-key never demotes)."""

    name: str
    token: str
    admin: bool
    expires: float | None = None  # epoch seconds when the token stops working; None: never


class Revoked(BaseModel):
    """A user whose token was revoked: no token works for them until an admin makes a new one."""

    name: str
    revoked: bool = True


class WhoAmI(BaseModel):
    """The caller."""

    name: str
    admin: bool


class Health(BaseModel):
    """Liveness of the service."""

    status: str
    version: str


def may_see_secrets(job: Job, viewer: User) -> bool:
    """True when `viewer` owns the job or is an admin: they see its env values and last log lines."""
    return viewer.is_admin or job.user == viewer.name


def redacted_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec with every env value replaced by REDACTED (the keys stay: they say what is set, not to what)."""
    env = spec.get("env")
    if not isinstance(env, dict) or not env:
        return dict(spec)
    return {**spec, "env": dict.fromkeys(env, REDACTED)}


def job_out(job: Job, viewer: User) -> JobOut:
    """The API view of a stored job as `viewer` may see it: others than its owner and admins get
    the env values redacted and no last log lines (they may hold secrets)."""
    devices = [f"{node}:{d}" for node, devs in sorted((job.allocation or {}).items()) for d in devs]
    full = may_see_secrets(job, viewer)
    spec = job.spec or {}
    return JobOut(
        id=job.id,
        name=job.name,
        user=job.user,
        state=job.state,
        reason=job.reason or "",
        priority=job.priority,
        gpus=job.gpus,
        min_gpus=job.min_gpus,
        max_gpus=job.max_gpus,
        devices=devices,
        submit_time=job.submit_time,
        start_time=job.start_time,
        end_time=job.end_time,
        queue_time=(job.start_time - job.submit_time) if job.start_time else None,
        run_time=job.run_time,
        attained_service=job.attained_service,
        restarts=job.restarts,
        preemptions=job.preemptions,
        resizes=job.resizes or 0,
        attempt=job.attempt,
        exit_code=job.exit_code,
        step=job.step,
        progress=job.progress,
        model=model_description(job.observations or {}, job.max_gpus),
        last_log=(job.last_log or "") if full else "",
        spec=dict(spec) if full else redacted_spec(spec),
        array_id=job.array_id,
        array_index=job.array_index,
    )
