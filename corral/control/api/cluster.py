"""The cluster: every device the executor hands out and the job on it."""

from fastapi import APIRouter

from corral.control.api.auth import Caller
from corral.control.api.deps import API, MAX_LIMIT, ServiceDep
from corral.control.api.models import ClusterOut, DeviceOut, NodeOut
from corral.control.states import JobState
from corral.control.store import Job

router = APIRouter(prefix=API, tags=["cluster"])


@router.get("/cluster", response_model=ClusterOut)
def cluster(user: Caller, service: ServiceDep) -> ClusterOut:
    """Every device and the job on it."""
    store = service.store
    view = service.executor.cluster()
    running = store.list_jobs(states=[JobState.RUNNING.value, JobState.RESTARTING.value])
    owner: dict[tuple[str, int], Job] = {}
    for job in running:
        for node, devs in (job.allocation or {}).items():
            for d in devs:
                owner[node, int(d)] = job
    devices = []
    for n in view.nodes:
        for d in range(n.num_devices):
            j = owner.get((n.name, d))
            devices.append(
                DeviceOut(
                    node=n.name,
                    device=d,
                    job_id=j.id if j else None,
                    job_name=j.name if j else None,
                    user=j.user if j else None,
                )
            )
    pending = len(store.list_jobs(states=[JobState.PENDING.value], limit=MAX_LIMIT))
    return ClusterOut(
        total=len(devices),
        used=len(owner),
        devices=devices,
        nodes=[NodeOut(name=n.name, devices=n.num_devices, labels=dict(n.labels)) for n in view.nodes],
        policy=service.scheduler.policy.name,
        pending=pending,
        running=len(running),
    )
