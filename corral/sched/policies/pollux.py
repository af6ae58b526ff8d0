"""Goodput-driven elastic allocation, after Pollux (Qiao et al., OSDI'21, section 4).

Each job's SPEEDUP(k) = goodput on k devices / goodput on one device, from its
GoodputModel (DEFAULT_MODEL when it has none), with k devices packed on as few
nodes as possible. Pollux maximises the generalised mean of the speedups,
FITNESS_p = (sum_j SPEEDUP_j^p / J)^(1/p), p = -1 by default (between
utilitarian p = 1 and max-min p -> -inf). Equivalently we maximise the sum of
the utilities (s^p - 1) / p (log s at p = 0), which increase in s for every p.

A job with no devices has speedup 0, which for p <= 0 outweighs anything else:
the search is therefore lexicographic, as Pollux's is in effect. First every job
that can get its min_gpus does (AdaptDL's order: fewer min_gpus first, then
submission; running jobs first on ties), then the remaining devices go where the
utility gain per device is largest (greedy with a node-sized lookahead, since
crossing a node boundary can make the next few devices worth little), then
moves that grow one job a step by shrinking the jobs that lose least improve
the sum until none helps.

With `pack_counts` (default) an elastic job grows only to sizes that tile
nodes (divisors of a node's devices, then whole nodes), besides its minimum and
the count it holds: the speedup model assumes a packed placement, and these
sizes let the pack placer deliver it without splitting gangs across nodes.

Changing a running job's count restarts it, so its speedup at any other count
is scaled by (1 - restart_penalty), as AdaptDL's Pollux does. Rigid jobs
(min_gpus == max_gpus) get exactly their count or nothing.
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_left, bisect_right
from collections.abc import Sequence

import numpy as np

from corral.errors import UserError
from corral.goodput import DEFAULT_MODEL, GoodputModel, speedup_tables
from corral.sched.policies._common import (
    BasePolicy,
    Counts,
    Reasons,
    node_sizes,
    running_first,
    schedulable,
    split_running,
)
from corral.sched.types import REASON_RESOURCES, REASON_UNSCHEDULABLE, ClusterView, JobView, Placer

_EPS = 1e-12  # ignore utility changes at rounding level, so ties never cause moves
_GROWERS = 4  # jobs tried as the one to grow in each improving move


class PolluxPolicy(BasePolicy):
    """Elastic allocation maximising the generalised mean of goodput speedups, with a restart penalty."""

    name = "pollux"

    def __init__(
        self,
        placer: Placer | str = "pack",
        *,
        p: float = -1.0,
        restart_penalty: float = 0.1,
        default_model: GoodputModel = DEFAULT_MODEL,
        max_moves: int = 256,
        pack_counts: bool = True,
    ) -> None:
        super().__init__(placer)
        if not math.isfinite(p):
            raise UserError(f"pollux p must be a finite number, got {p}")
        if not 0.0 <= restart_penalty < 1.0:
            raise UserError(f"pollux restart_penalty must be in [0, 1), got {restart_penalty}")
        if max_moves < 0:
            raise UserError(f"pollux max_moves must be >= 0, got {max_moves}")
        self.p = float(p)
        self.restart_penalty = float(restart_penalty)
        self.default_model = default_model
        self.max_moves = int(max_moves)
        self.pack_counts = bool(pack_counts)

    def utility(self, speedup: np.ndarray) -> np.ndarray:
        """(s^p - 1) / p, or log s at p = 0: increasing in s, so maximising its sum maximises FITNESS_p."""
        with np.errstate(divide="ignore"):
            out: np.ndarray = np.log(speedup) if self.p == 0.0 else (np.power(speedup, self.p) - 1.0) / self.p
            return out

    def counts(self, now: float, jobs: Sequence[JobView], cluster: ClusterView) -> tuple[Counts, Reasons]:
        """Admit jobs at min_gpus, then hand out the rest by marginal utility per device."""
        sizes = node_sizes(cluster)
        total = cluster.total_devices
        per_node = max(sizes.values(), default=1)
        counts, rest = split_running(jobs, sizes, only_pinned=True)
        capacity = total - sum(counts.values())
        reasons: Reasons = {}

        # 1. Admission: as many jobs as possible get their minimum.
        admitted: list[JobView] = []
        order = sorted(rest, key=lambda j: (max(j.min_gpus, 1), running_first(j), j.submit_time, j.id))
        for job in order:
            if not schedulable(job, total):
                reasons[job.id] = REASON_UNSCHEDULABLE
                continue
            lo = max(job.min_gpus, 1)
            if lo <= capacity:
                admitted.append(job)
                counts[job.id] = lo
                capacity -= lo
            else:
                reasons[job.id] = REASON_RESOURCES

        # 2. and 3. Elastic jobs share what is left.
        elastic = [j for j in admitted if min(j.max_gpus, total) > max(j.min_gpus, 1)]
        if elastic and capacity > 0:
            grown = self._grow(elastic, capacity, total, per_node)
            for job, k in zip(elastic, grown, strict=True):
                counts[job.id] = k
        return counts, reasons

    def _utility_rows(self, elastic: list[JobView], spare: int, total: int, per_node: int) -> list[list[float]]:
        """Per job, utility at k = 0..hi devices (restart penalty applied), hi the most it could get now."""
        # No job can grow past its minimum plus the spare devices; rounding that up
        # to a power of two keeps the speedup-table cache hitting from round to round.
        his = [min(j.max_gpus, total, 1 << (max(j.min_gpus, 1) + spare - 1).bit_length()) for j in elastic]
        models = [j.throughput if j.throughput is not None else self.default_model for j in elastic]
        tables = speedup_tables(models, his, per_node)
        # One flat array for all jobs: a few numpy calls per round, not per job.
        lengths = np.array([len(t) for t in tables])
        starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        running = np.array([bool(j.allocation) for j in elastic])
        penalty = np.where(np.repeat(running, lengths), 1.0 - self.restart_penalty, 1.0)
        # Any count but the current one restarts a running job.
        for i, job in enumerate(elastic):
            held = job.allocation.num_devices
            if held and held < lengths[i]:
                penalty[starts[i] + held] = 1.0
        flat = self.utility(np.concatenate(tables) * penalty).tolist()
        return [flat[a : a + n] for a, n in zip(starts.tolist(), lengths.tolist(), strict=True)]

    def _allowed(self, lo: int, hi: int, held: int, per_node: int) -> list[int]:
        """The counts a job may get: lo, the held count, and (with pack_counts) node-friendly sizes only."""
        if not self.pack_counts:
            return list(range(lo, hi + 1))
        # Divisors of a node below it, multiples of a node above: such gangs tile
        # nodes exactly, so packing them never has to split a job across nodes.
        sizes = {k for k in range(1, per_node + 1) if per_node % k == 0}
        sizes.update(range(per_node, hi + 1, per_node))
        sizes.update((lo, held))
        return sorted(k for k in sizes if lo <= k <= hi)

    def _grow(self, elastic: list[JobView], capacity: int, total: int, per_node: int) -> list[int]:
        """Counts for the elastic jobs, from their minimum, using at most `capacity` more devices."""
        utils = self._utility_rows(elastic, capacity, total, per_node)
        held = [j.allocation.num_devices for j in elastic]
        allowed = [
            self._allowed(max(j.min_gpus, 1), len(u) - 1, h, per_node)
            for j, u, h in zip(elastic, utils, held, strict=True)
        ]
        cur = [a[0] for a in allowed]

        def best_step(i: int, cap: int) -> tuple[float, int] | None:
            # Best utility gain per device over the next node's worth of counts,
            # and the job's current count (staying put avoids a restart).
            k, u = cur[i], utils[i]
            top = min(k + cap, allowed[i][-1])
            best = None
            for k2 in allowed[i][bisect_right(allowed[i], k) :]:
                if k2 > top:
                    break
                if k2 > k + per_node and k2 != held[i]:
                    continue
                ratio = (u[k2] - u[k]) / (k2 - k)
                if ratio > _EPS and (best is None or ratio > best[0]):
                    best = (ratio, k2)
            return best

        heap: list[tuple[float, int, int, int]] = []
        for i in range(len(elastic)):
            step = best_step(i, capacity)
            if step:
                heap.append((-step[0], i, cur[i], step[1]))
        heapq.heapify(heap)
        while heap and capacity > 0:
            _, i, k_from, k_to = heapq.heappop(heap)
            if cur[i] != k_from:
                continue  # stale: the job moved since this entry was pushed
            if k_to - k_from > capacity:
                step = best_step(i, capacity)
                if step:
                    heapq.heappush(heap, (-step[0], i, cur[i], step[1]))
                continue
            capacity -= k_to - k_from
            cur[i] = k_to
            step = best_step(i, capacity)
            if step:
                heapq.heappush(heap, (-step[0], i, cur[i], step[1]))

        self._improve(utils, allowed, cur, capacity)
        return cur

    def _improve(self, utils: list[list[float]], allowed: list[list[int]], cur: list[int], idle: int) -> None:
        """Grow a job one step by shrinking the jobs that lose least, while the sum of utilities improves."""
        n = len(cur)
        if n < 2 or self.max_moves == 0:
            return
        gain = np.empty(n)  # utility gained by moving up to the next allowed count
        need = np.empty(n)  # devices that move takes
        loss = np.empty(n)  # utility lost by moving down to the previous allowed count
        frees = np.empty(n)  # devices that move frees

        def refresh(i: int) -> None:
            k, u, a = cur[i], utils[i], allowed[i]
            pos = bisect_left(a, k)
            if pos + 1 < len(a):
                gain[i], need[i] = u[a[pos + 1]] - u[k], a[pos + 1] - k
            else:
                gain[i], need[i] = -math.inf, 1
            if pos > 0:
                loss[i], frees[i] = u[k] - u[a[pos - 1]], k - a[pos - 1]
            else:
                loss[i], frees[i] = math.inf, 1

        for i in range(n):
            refresh(i)
        for _ in range(self.max_moves):
            move = self._best_move(gain, need, loss, frees, idle)
            if move is None:
                return
            a, donors = move
            cur[a] += int(need[a])
            idle -= int(need[a])
            for b in donors:
                idle += int(frees[b])
                cur[b] -= int(frees[b])
                refresh(b)
            refresh(a)

    @staticmethod
    def _best_move(
        gain: np.ndarray, need: np.ndarray, loss: np.ndarray, frees: np.ndarray, idle: int
    ) -> tuple[int, list[int]] | None:
        """(job to grow, jobs to shrink) that raises the utility sum, trying the best few growers; None if none."""
        growers = np.argsort(-(gain / need))[:_GROWERS]
        donors = np.argsort(loss / frees).tolist()  # cheapest utility per freed device first
        for a in growers.tolist():
            if not gain[a] > _EPS:
                return None
            short, lost, chosen = need[a] - idle, 0.0, []
            for b in donors:
                if short <= 0 or not gain[a] - lost > _EPS or loss[b] == math.inf:
                    break
                if b != a:
                    chosen.append(b)
                    short -= frees[b]
                    lost += loss[b]
            if short <= 0 and gain[a] - lost > _EPS:
                return a, chosen
        return None

    def __repr__(self) -> str:
        return (
            f"PolluxPolicy(placer={self.placer.name!r}, p={self.p}, "
            f"restart_penalty={self.restart_penalty}, max_moves={self.max_moves}, pack_counts={self.pack_counts})"
        )
