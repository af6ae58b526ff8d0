"""Glue shared by `corral simulate` and the benchmarks: parse a cluster spec, build policies, run them."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from corral.errors import UserError
from corral.sched.types import ClusterView, Policy
from corral.sim.engine import SimConfig, SimProgress, SimResult, simulate
from corral.sim.tracejob import TraceJob

_CLUSTER = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


def parse_cluster(spec: str) -> ClusterView:
    """`NODESxGPUS` (e.g. 16x4) as a uniform ClusterView; UserError on anything else."""
    m = _CLUSTER.match(spec or "")
    if not m:
        raise UserError(f"cluster {spec!r}: expected NODESxGPUS, e.g. 16x4 (16 nodes of 4 GPUs)")
    nodes, gpus = int(m.group(1)), int(m.group(2))
    if nodes < 1 or gpus < 1:
        raise UserError(f"cluster {spec!r}: nodes and GPUs per node must be at least 1")
    return ClusterView.uniform(nodes, gpus)


def policy_names(spec: str) -> list[str]:
    """A comma-separated policy list, without blanks or repeats; UserError when empty."""
    names = list(dict.fromkeys(p.strip().lower() for p in (spec or "").split(",") if p.strip()))
    if not names:
        raise UserError("--policy: name at least one policy, e.g. fifo,tiresias")
    return names


def available_policies() -> list[str]:
    """Names of the registered scheduling policies."""
    from corral.sched import policies

    return list(policies.available())


def make_policy(name: str, *, placement: str = "pack", seed: int = 0) -> Policy:
    """A policy from the registry with the given placer; the registry's UserError lists the known policies."""
    from corral.sched import policies
    from corral.sched.placement import get_placer

    placer = get_placer(placement, seed=seed) if placement == "random" else get_placer(placement)
    return policies.get(name, placer=placer)


def run_policies(
    jobs: Sequence[TraceJob],
    names: Sequence[str],
    cluster: ClusterView,
    config: SimConfig,
    *,
    placement: str = "pack",
    seed: int = 0,
    on_start: Callable[[str], None] | None = None,
    on_progress: Callable[[str, SimProgress], None] | None = None,
) -> list[SimResult]:
    """Simulate `jobs` under each named policy in turn (all policies are built first, so bad names fail fast)."""
    built = [make_policy(n, placement=placement, seed=seed) for n in names]
    results = []
    for name, policy in zip(names, built, strict=True):
        if on_start is not None:
            on_start(name)
        cb = None if on_progress is None else (lambda p, name=name: on_progress(name, p))
        results.append(simulate(jobs, policy, cluster, config, on_progress=cb))
    return results
