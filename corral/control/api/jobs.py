"""Jobs: submit, list, describe, cancel, their events, and the metrics they report."""

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query

from corral.control.api.auth import Caller, Credentials, Tokens, authorize_report, require_owner, require_token
from corral.control.api.deps import API, MAX_LIMIT, ServiceDep, find_job
from corral.control.api.models import (
    EventList,
    EventOut,
    JobList,
    JobOut,
    MetricBatch,
    MetricList,
    MetricOut,
    job_out,
)
from corral.control.spec import JobSpec
from corral.control.states import JobState

router = APIRouter(prefix=f"{API}/jobs", tags=["jobs"])


@router.post("", response_model=JobOut, status_code=201)
def submit(spec: JobSpec, user: Caller, service: ServiceDep) -> JobOut:
    """Queue a job; refused (422) when it could never fit the cluster."""
    return job_out(service.submit(spec, user.name), user)


@router.get("", response_model=JobList)
def list_jobs(
    user: Caller,
    service: ServiceDep,
    state: Annotated[list[JobState] | None, Query()] = None,
    owner: Annotated[str | None, Query(alias="user", max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 1000,
) -> JobList:
    """Jobs, newest first, filtered by state (repeatable) and user. Env values and last log lines of
    other users' jobs are redacted unless the caller is an admin."""
    jobs = service.store.list_jobs(states=[s.value for s in state] if state else None, user=owner, limit=limit)
    return JobList(jobs=[job_out(j, user) for j in jobs])


@router.get("/{job_id}", response_model=JobOut)
def describe(job_id: int, user: Caller, service: ServiceDep) -> JobOut:
    """One job (anyone may look, like squeue; env values and last log lines only for its owner or an admin)."""
    return job_out(find_job(service, job_id), user)


@router.post("/{job_id}/cancel", response_model=JobOut)
def cancel(job_id: int, user: Caller, service: ServiceDep) -> JobOut:
    """Cancel a job: a waiting one at once, a running one after its ranks stop. Owner or admin."""
    job = find_job(service, job_id)
    require_owner(job, user, "cancel it")
    if JobState(job.state).is_terminal:
        raise HTTPException(409, f"job {job_id} already ended ({job.state})")
    service.cancel(job_id)
    return job_out(find_job(service, job_id), user)


@router.get("/{job_id}/events", response_model=EventList)
def events(job_id: int, user: Caller, service: ServiceDep) -> EventList:
    """Every state transition of a job, with its time and cause."""
    find_job(service, job_id)
    return EventList(
        events=[
            EventOut(time=e.time, src=e.src, dst=e.dst, cause=e.cause, data=e.data or {})
            for e in service.store.events(job_id)
        ]
    )


@router.get("/{job_id}/metrics", response_model=MetricList)
def metrics(job_id: int, user: Caller, service: ServiceDep) -> MetricList:
    """Metrics the job reported (loss, accuracy, samples/s...)."""
    find_job(service, job_id)
    return MetricList(
        metrics=[MetricOut(time=m.time, step=m.step, values=m.values) for m in service.store.metrics(job_id)]
    )


@router.post("/{job_id}/metrics", status_code=204)
def report(job_id: int, body: MetricBatch, cred: Credentials, tokens: Tokens, service: ServiceDep) -> None:
    """Record metrics from a running job: its CORRAL_JOB_TOKEN, or the owner's token. Values must be finite."""
    token = require_token(cred)
    job = find_job(service, job_id)
    authorize_report(job, token, tokens)
    service.store.add_metrics_batch(job_id, [(r.step, r.values, r.time) for r in body.records])
