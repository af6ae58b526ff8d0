"""Jobs: submit, list, describe, cancel, their events, and the metrics they report."""

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query

from corral.control.api.auth import Caller, Credentials, Tokens, authorize_report, require_owner, require_token
from corral.control.api.deps import API, MAX_LIMIT, ServiceDep, find_job
from corral.control.api.models import (
    CancelIn,
    CancelOut,
    EventList,
    EventOut,
    JobBatch,
    JobList,
    JobOut,
    MetricBatch,
    MetricList,
    MetricOut,
    job_out,
)
from corral.control.spec import JobSpec
from corral.control.states import ACTIVE, JobState

router = APIRouter(prefix=f"{API}/jobs", tags=["jobs"])


@router.post("", response_model=JobOut, status_code=201)
def submit(spec: JobSpec, user: Caller, service: ServiceDep) -> JobOut:
    """Queue a job, or an array of jobs (the first is returned, with `array_size`). Refused with 422 when
    it could never fit the cluster or a dependency does not exist, 403 naming the limit it breaks."""
    jobs = service.submit(spec, user.name)
    out = job_out(jobs[0], user)
    if spec.array is not None:
        out.array_size = len(jobs)
    return out


@router.post("/batch", response_model=JobList, status_code=201)
def submit_batch(body: JobBatch, user: Caller, service: ServiceDep) -> JobList:
    """Queue several jobs in one transaction, all or none (each checked as a single submit)."""
    return JobList(jobs=[job_out(j, user) for j in service.submit_batch(body.jobs, user.name)])


@router.post("/cancel", response_model=CancelOut)
def cancel_many(body: CancelIn, user: Caller, service: ServiceDep) -> CancelOut:
    """Cancel many jobs in one request: by ids, or by user, state, name or array (all given must match).

    A user may cancel only their own jobs (`user` defaults to the caller); an admin any. Jobs that
    already ended are left as they are."""
    if not (body.ids or body.user or body.state or body.name or body.array):
        raise HTTPException(422, "body: give ids or at least one filter (user, state, name, array)")
    owner = body.user or (None if user.is_admin else user.name)
    if owner and owner != user.name and not user.is_admin:
        raise HTTPException(403, f"user: only an admin may cancel the jobs of {owner}")
    states = [s.value for s in body.state] or list(ACTIVE)
    if body.ids:
        jobs = [j for j in service.store.jobs_by_ids(body.ids) if j.state in states]
        others = sorted({j.user for j in jobs if j.user != user.name})
        if others and not user.is_admin:
            raise HTTPException(
                403, f"ids: some jobs belong to {', '.join(others)}; only they or an admin may cancel them"
            )
        jobs = [j for j in jobs if (not owner or j.user == owner) and (not body.name or j.name == body.name)]
        jobs = [j for j in jobs if body.array is None or j.array_id == body.array]
    else:
        jobs = service.store.list_jobs(states=states, user=owner, name=body.name, array=body.array, limit=10**9)
    return CancelOut(cancelled=service.cancel_many([j.id for j in jobs]))


@router.get("", response_model=JobList)
def list_jobs(
    user: Caller,
    service: ServiceDep,
    state: Annotated[list[JobState] | None, Query()] = None,
    owner: Annotated[str | None, Query(alias="user", max_length=64)] = None,
    name: Annotated[str | None, Query(max_length=128)] = None,
    array: Annotated[int | None, Query(ge=1, le=2**62)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 1000,
) -> JobList:
    """Jobs, newest first, filtered by state (repeatable), user, name and array. Env values and last log
    lines of other users' jobs are redacted unless the caller is an admin."""
    jobs = service.store.list_jobs(
        states=[s.value for s in state] if state else None, user=owner, name=name, array=array, limit=limit
    )
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
