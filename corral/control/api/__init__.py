"""The HTTP API of the service (FastAPI): one router per resource.

    health      GET  /api/v1/health (no token)
    users       GET  /api/v1/whoami, POST /api/v1/users, POST /api/v1/users/{name}/revoke
    accounts    GET /api/v1/users, PATCH /api/v1/users/{name}, /api/v1/groups (admins: limits, shares)
    jobs        /api/v1/jobs: submit (one, an array, a batch), list, describe, cancel (one, many), events, metrics
    logs        GET  /api/v1/jobs/{id}/logs (through the executor)
    cluster     GET  /api/v1/cluster
    prometheus  GET  /metrics (no token)
    dashboard   GET  / (no token)

Every route under /api/v1 but health needs a bearer token (`auth.Caller`). Routers
reach the service through a dependency (`deps.ServiceDep`, from `app.state`), never
through closures. Errors a client can cause come back as a 4xx with one line in
`detail`; nothing in the store changes.
"""

from fastapi import FastAPI

from corral.control.api import accounts, cluster, dashboard, errors, health, jobs, logs, prometheus, users
from corral.control.api.auth import TokenCache
from corral.control.service import Service

__all__ = ["create_app"]


def create_app(service: Service) -> FastAPI:
    """The FastAPI application of one service."""
    app = FastAPI(title="corral", version="1", description="Schedules and runs distributed training jobs.")
    app.state.service = service
    app.state.tokens = TokenCache(service.store)
    app.state.registry = prometheus.registry_for(service)
    errors.register(app)
    for module in (health, users, accounts, jobs, logs, cluster, prometheus, dashboard):
        app.include_router(module.router)
    return app
