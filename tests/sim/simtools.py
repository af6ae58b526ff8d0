"""Helpers for the simulator tests: a small local FIFO policy and trace builders."""

from __future__ import annotations

from collections.abc import Sequence

from corral.sched.types import Allocation, ClusterView, Decision, JobView


class LocalFifo:
    """Strict FIFO, no preemption, packed placement: a stand-in for the real registry in tests."""

    name = "local-fifo"

    def schedule(self, now: float, jobs: Sequence[JobView], cluster: ClusterView) -> Decision:
        """Keep running jobs; start waiting jobs in submit order until the first that does not fit."""
        allocs = {j.id: j.allocation for j in jobs if j.allocation}
        free = cluster.free_devices(allocs.values())
        for job in sorted((j for j in jobs if not j.allocation), key=lambda j: (j.submit_time, j.id)):
            alloc = pack(job.requested, free)
            if alloc is None:
                break
            allocs[job.id] = alloc
        return Decision(allocs)


def pack(n: int, free: dict[str, list[int]]) -> Allocation | None:
    """Take n devices from `free` (mutated), fullest-fitting node first; None when they do not fit."""
    if sum(len(d) for d in free.values()) < n:
        return None
    fits = [node for node, devs in free.items() if len(devs) >= n]
    order = [min(fits, key=lambda node: len(free[node]))] if fits else sorted(free, key=lambda node: -len(free[node]))
    got: dict[str, list[int]] = {}
    for node in order:
        take = free[node][: n - sum(len(v) for v in got.values())]
        if take:
            got[node] = take
            free[node] = free[node][len(take):]
        if sum(len(v) for v in got.values()) == n:
            break
    return Allocation.of(got)
