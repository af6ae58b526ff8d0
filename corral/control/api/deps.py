"""What every router reaches through FastAPI dependencies: the service the app serves, and the job a path names."""

from typing import Annotated

from fastapi import Depends, HTTPException, Request

from corral.control.service import Service
from corral.control.store import Job

API = "/api/v1"
MAX_LIMIT = 10_000


def get_service(request: Request) -> Service:
    """The service of the app serving this request (set by `create_app`)."""
    service: Service = request.app.state.service
    return service


ServiceDep = Annotated[Service, Depends(get_service)]


def find_job(service: Service, job_id: int) -> Job:
    """The job with this id, or a 404 naming it."""
    job = service.store.get_job(job_id) if 0 < job_id < 2**62 else None
    if job is None:
        raise HTTPException(404, f"no job with id {job_id}")
    return job
