"""A job's output, read through the executor (the API never opens a local path): whole, from an offset, or followed."""

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import PlainTextResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from corral.control.api.auth import Caller, require_owner
from corral.control.api.deps import API, ServiceDep, find_job
from corral.control.service import Service
from corral.control.states import JobState

FOLLOW_POLL = 0.2  # seconds between reads of a followed log
READ_LIMIT = 1 << 20  # bytes per read from the executor

router = APIRouter(prefix=API, tags=["jobs"])


@router.get(
    "/jobs/{job_id}/logs",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {}}, "description": "Log text from `offset`"}},
)
def logs(
    job_id: int,
    user: Caller,
    service: ServiceDep,
    rank: Annotated[int | None, Query(ge=0, le=4096)] = None,
    follow: bool = False,
    offset: Annotated[int, Query(ge=0, le=2**62)] = 0,
) -> Any:
    """A job's output: all ranks prefixed (no rank) or one rank; `follow` streams until the job ends.

    Without `follow` at most 1 MiB comes back; the `X-Corral-Offset` header is where to read next.
    Followed, only whole lines are sent while the job runs, so a client that reconnects at the
    offset it reached repeats and loses nothing; once the job has ended the rest follows as written.
    """
    job = find_job(service, job_id)
    require_owner(job, user, "read its logs")
    if not follow:
        data = service.executor.read_log(job_id, rank, offset, READ_LIMIT)
        return PlainTextResponse(data.decode(errors="replace"), headers={"X-Corral-Offset": str(offset + len(data))})
    return StreamingResponse(_follow(service, job_id, rank, offset), media_type="text/plain")


async def _follow(service: Service, job_id: int, rank: int | None, offset: int) -> AsyncIterator[bytes]:
    """Whole lines from `offset` as they are written, then everything left once the job has ended."""

    def read(pos: int) -> bytes:
        return service.executor.read_log(job_id, rank, pos, READ_LIMIT)

    def ended() -> bool:
        job = service.store.get_job(job_id)
        return job is None or JobState(job.state).is_terminal

    pos = offset
    while True:
        # Read the state first: what was written before the job ended is then surely read below.
        done = await run_in_threadpool(ended)
        while raw := await run_in_threadpool(read, pos):
            chunk = raw
            if not done:
                # Whole lines only: a line still being written is sent once complete (a line
                # longer than one read is sent in pieces rather than never).
                cut = raw.rfind(b"\n") + 1
                if cut:
                    chunk = raw[:cut]
                elif len(raw) < READ_LIMIT:
                    break
            pos += len(chunk)
            yield chunk
            if len(raw) < READ_LIMIT and not done:
                break  # caught up with the writer
        if done:
            return
        await asyncio.sleep(FOLLOW_POLL)
