"""The engine's incremental rounds change nothing: the same runs as fresh views and a full policy pass every round.

The reference wraps a policy so that the engine sees no `refresh_by` (every
running job's view is rebuilt every round) and every round is decided by a
new instance (no memory of the last round). The incremental engine and
policies must give exactly the same per-job results.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from corral.sched import policies
from corral.sched.types import ClusterView, Decision, JobView
from corral.sim.engine import SimConfig, simulate
from corral.sim.traces import load_trace
from tests.sim.helpers import TRACES


class FromScratch:
    """`name`'s decisions computed afresh each round, from fresh views."""

    def __init__(self, name: str, **opts: object) -> None:
        self.name, self.opts = name, opts

    def schedule(self, now: float, jobs: Sequence[JobView], cluster: ClusterView) -> Decision:
        """A new instance every round."""
        return policies.get(self.name, **self.opts).schedule(now, jobs, cluster)


def outcomes(result):  # noqa: ANN001, ANN201 - SimResult -> comparable tuple
    return (
        result.rounds,
        result.stopped,
        [
            (j.id, j.status, j.first_start, j.finish_time, j.restarts, j.preemptions, j.attained_service, j.run_time)
            for j in result.jobs
        ],
    )


CASES = [
    ("fifo", {}),
    ("tiresias", {}),
    # Small thresholds and a keen starvation guard: queues change often while jobs run.
    ("tiresias", {"thresholds": [600.0, 6000.0], "starvation_factor": 1.0}),
]


@pytest.mark.parametrize(("name", "opts"), CASES)
@pytest.mark.parametrize("event_rounds", [True, False])
@pytest.mark.parametrize(("spec", "nodes", "load"), [("synthetic:300:4", 4, 2.0), ("synthetic:300:5", 16, 1.0)])
def test_incremental_rounds_give_the_results_of_full_rounds(name, opts, event_rounds, spec, nodes, load) -> None:
    cluster = ClusterView.uniform(nodes, 4)
    # At load 2 the queue grows: preemption, starvation promotion, rounds that do not fit.
    jobs = load_trace(spec, devices=int(cluster.total_devices * load))
    config = SimConfig(event_rounds=event_rounds)
    fast = simulate(jobs, policies.get(name, **opts), cluster, config)
    reference = simulate(jobs, FromScratch(name, **opts), cluster, config)
    assert outcomes(fast) == outcomes(reference)


@pytest.mark.skipif(not (TRACES / "pollux").is_dir(), reason="shared Pollux traces not present")
@pytest.mark.parametrize("name", ["fifo", "tiresias"])
def test_incremental_rounds_on_a_pollux_workload(name: str) -> None:
    cluster = ClusterView.uniform(4, 4)
    jobs = load_trace("pollux:workload-2", traces_dir=TRACES)[:60]
    config = SimConfig(event_rounds=False, start_overhead=True)
    assert outcomes(simulate(jobs, policies.get(name), cluster, config)) == outcomes(
        simulate(jobs, FromScratch(name), cluster, config)
    )
