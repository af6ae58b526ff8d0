"""Prometheus: a collector that reads the store at scrape time, and the /metrics route that exposes it."""

from collections.abc import Iterator

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import func, select

from corral.control.service import Service
from corral.control.states import JobState
from corral.control.store import Job

router = APIRouter(tags=["service"])


class StoreCollector:
    """Prometheus collector that reads the store at scrape time (no counters to keep in sync)."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def collect(self) -> Iterator[GaugeMetricFamily]:
        svc = self.service
        with svc.store.session() as s:
            by_state = dict(s.execute(select(Job.state, func.count()).group_by(Job.state)).all())
            totals = s.execute(
                select(
                    func.coalesce(func.sum(Job.preemptions), 0),
                    func.coalesce(func.sum(Job.restarts), 0),
                    func.coalesce(func.sum(Job.resizes), 0),
                )
            ).one()
            running = list(
                s.scalars(select(Job).where(Job.state.in_([JobState.RUNNING.value, JobState.RESTARTING.value])))
            )
        jobs = GaugeMetricFamily("corral_jobs", "Jobs by state", labels=["state"])
        for state in JobState:
            jobs.add_metric([state.value], by_state.get(state.value, 0))
        yield jobs
        yield GaugeMetricFamily(
            "corral_devices_total", "Device slots the executor hands out", value=svc.total_devices()
        )
        used = sum(len(d) for j in running for d in (j.allocation or {}).values())
        yield GaugeMetricFamily("corral_devices_used", "Device slots held by running jobs", value=used)
        yield GaugeMetricFamily("corral_preemptions", "Preemptions of all jobs so far", value=totals[0])
        yield GaugeMetricFamily("corral_restarts", "Restarts after failures of all jobs so far", value=totals[1])
        yield GaugeMetricFamily("corral_resizes", "Elastic resizes of all jobs so far", value=totals[2])
        yield GaugeMetricFamily("corral_scheduler_rounds", "Scheduling rounds run since start", value=svc.rounds)
        yield GaugeMetricFamily(
            "corral_scheduler_round_seconds", "Duration of the last scheduling round", value=svc.last_round_seconds
        )


def registry_for(service: Service) -> CollectorRegistry:
    """A registry of its own for one service's app (two apps in one process do not share metrics)."""
    registry = CollectorRegistry()
    registry.register(StoreCollector(service))
    return registry


@router.get("/metrics", response_class=PlainTextResponse)
def prometheus(request: Request) -> PlainTextResponse:
    """Prometheus exposition of jobs by state, devices and scheduler rounds."""
    registry: CollectorRegistry = request.app.state.registry
    return PlainTextResponse(generate_latest(registry).decode(), media_type="text/plain; version=0.0.4")
