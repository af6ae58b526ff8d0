"""Placement: turn per-job device counts into concrete devices on nodes.

Policies decide who runs and with how many devices; a placer decides where.
Every placer keeps the same contract (types.Placer):

- a job whose count is unchanged keeps exactly the devices it holds (`keep`),
  so a scheduling round never migrates a job it does not resize;
- a job that shrinks keeps a subset of its devices, on as few nodes as possible;
- a gang is all-or-nothing: a job gets its whole count or is left out.

Counts always fit when their sum is at most the cluster's devices, because a job
may span nodes; the placer only decides locality.
"""

from __future__ import annotations

import heapq
import random
from bisect import insort
from collections.abc import Iterable, Mapping
from typing import Any

from corral.errors import UserError
from corral.sched.types import Allocation, ClusterView


class FreeDevices:
    """Free devices per node: taken by a placement call, and given back by `release`.

    One placement call builds one from the cluster; an incremental policy
    keeps one across rounds instead (claim what starts, release what stops).
    Each node's free list stays sorted, so the state depends only on which
    devices are free, never on the order of claims and releases.
    """

    def __init__(self, cluster: ClusterView) -> None:
        self.names = [n.name for n in cluster.nodes]
        self.index = {name: i for i, name in enumerate(self.names)}
        self.free = [list(range(n.num_devices)) for n in cluster.nodes]
        self.total = sum(len(f) for f in self.free)
        self.width = max((len(f) for f in self.free), default=0)
        self._buckets: list[list[int]] | None = None
        self._pushes = 0

    def claim(self, alloc: Allocation) -> bool:
        """Take exactly the devices of `alloc` if all are free; otherwise take none."""
        wanted = []
        for node, devs in alloc.slots:
            i = self.index.get(node)
            if i is None or len(set(devs)) != len(devs):
                return False
            free = self.free[i]
            if any(d not in free for d in devs):
                return False
            wanted.append((i, devs))
        for i, devs in wanted:
            free = self.free[i]
            for d in devs:
                free.remove(d)
            self.total -= len(devs)
            self._moved(i)
        return True

    def release(self, alloc: Allocation) -> None:
        """Give back the devices of `alloc` (which must be taken)."""
        for node, devs in alloc.slots:
            i = self.index[node]
            free = self.free[i]
            for d in devs:
                insort(free, d)
            self.total += len(devs)
            self._moved(i)

    def _moved(self, i: int) -> None:
        # Keep the count buckets (once built) pointing at node i's new count;
        # the stale entry it leaves behind is skipped by pop_node.
        buckets = self._buckets
        if buckets is None:
            return
        if len(self.free[i]):
            heapq.heappush(buckets[len(self.free[i])], i)
        self._pushes += 1
        if self._pushes > 4 * len(self.free) + 64:
            self._buckets = None  # too many stale entries: rebuilt on next use

    def claim_subset(self, alloc: Allocation, count: int) -> Allocation | None:
        """Take `count` of the devices of `alloc`, from its fullest nodes first; None if they are not free."""
        slots = sorted(alloc.slots, key=lambda s: (-len(s[1]), s[0]))
        picked: dict[str, list[int]] = {}
        need = count
        for node, devs in slots:
            if need == 0:
                break
            take = list(devs[:need])
            picked[node] = take
            need -= len(take)
        subset = Allocation.of(picked)
        if need or not self.claim(subset):
            return None
        return subset

    # -- count-bucketed view, built once the kept devices are claimed --------

    def buckets(self) -> list[list[int]]:
        """Heaps of node indices by free count (index = free devices); lazily built."""
        if self._buckets is None:
            self._buckets = [[] for _ in range(self.width + 1)]
            self._pushes = 0
            for i, f in enumerate(self.free):
                if f:
                    self._buckets[len(f)].append(i)  # appended in index order: already a heap
        return self._buckets

    def pop_node(self, count: int) -> int | None:
        """Remove and return the lowest-index node with exactly `count` free devices."""
        heap = self.buckets()[count]
        while heap:
            i = heapq.heappop(heap)
            if len(self.free[i]) == count:  # stale entries left when a node's count fell
                return i
        return None

    def take(self, i: int, k: int, out: dict[int, list[int]]) -> None:
        """Move the `k` lowest free devices of node `i` into `out`."""
        free = self.free[i]
        out.setdefault(i, []).extend(free[:k])
        del free[:k]
        self.total -= k
        if free:
            heapq.heappush(self.buckets()[len(free)], i)

    def allocation(self, picked: Mapping[int, list[int]]) -> Allocation:
        """The Allocation of node index -> devices, in Allocation's canonical order."""
        slots = sorted((self.names[i], tuple(sorted(devs))) for i, devs in picked.items() if devs)
        return Allocation(tuple(slots))


class BasePlacer:
    """Shared keep/shrink handling; subclasses choose devices for fresh placements."""

    name: str = ""

    def place(
        self,
        demands: Mapping[str, int],
        cluster: ClusterView,
        keep: Mapping[str, Allocation] | None = None,
    ) -> dict[str, Allocation]:
        """Give each job id in `demands` that many devices; jobs that do not fit are absent."""
        free = FreeDevices(cluster)
        state = self._new_state()
        keep = keep or {}
        placed: dict[str, Allocation] = {}
        fresh: list[tuple[str, int]] = []
        # Kept devices are claimed before anything is placed fresh, so a job that
        # keeps its count never moves, whatever the demand order.
        for job_id, count in demands.items():
            if count <= 0:
                continue
            held = keep.get(job_id)
            if held and held.num_devices == count and free.claim(held):
                placed[job_id] = held
            elif held and 0 < count < held.num_devices and (sub := free.claim_subset(held, count)):
                placed[job_id] = sub
            else:
                fresh.append((job_id, count))
        placed.update(self.place_fresh(free, fresh, state))
        return {j: placed[j] for j in demands if j in placed}

    def place_fresh(
        self, free: FreeDevices, demands: Iterable[tuple[str, int]], state: object = None
    ) -> dict[str, Allocation]:
        """Place each (job id, count) of `demands`, in order, on devices of `free` (taken).

        Those that do not fit are absent."""
        if state is None:
            state = self._new_state()
        placed: dict[str, Allocation] = {}
        for job_id, count in demands:
            if count <= 0 or count > free.total:
                continue
            placed[job_id] = free.allocation(self._choose(free, count, state))
        return placed

    def _new_state(self) -> object:
        """Per-call scratch state (none by default), so one placer may serve concurrent calls."""
        return None

    def _choose(self, free: FreeDevices, count: int, state: object) -> dict[int, list[int]]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class PackPlacer(BasePlacer):
    """Fewest nodes, best fit: the fullest node that still holds the whole job, else the emptiest nodes first."""

    name = "pack"

    def _choose(self, free: FreeDevices, count: int, state: object) -> dict[int, list[int]]:
        picked: dict[int, list[int]] = {}
        width = len(free.buckets()) - 1
        need = count
        while need > 0:
            # Best fit: the node with the fewest free devices that still holds the
            # rest, so whole empty nodes stay free for large gangs.
            for c in range(need, width + 1):
                i = free.pop_node(c)
                if i is not None:
                    free.take(i, need, picked)
                    return picked
            # Nothing holds the rest: take the node with the most free devices
            # (largest first reaches the count on the fewest nodes).
            for c in range(min(need, width), 0, -1):
                i = free.pop_node(c)
                if i is not None:
                    free.take(i, c, picked)
                    need -= c
                    break
            else:  # pragma: no cover - callers check the total first
                raise RuntimeError("not enough free devices")
        return picked


class SpreadPlacer(BasePlacer):
    """Round-robin over the nodes with the most free devices: each job spans as many nodes as it can."""

    name = "spread"

    def _choose(self, free: FreeDevices, count: int, state: object) -> dict[int, list[int]]:
        picked: dict[int, list[int]] = {}
        width = len(free.buckets()) - 1
        taken: list[int] = []
        for _ in range(count):
            for c in range(width, 0, -1):
                i = free.pop_node(c)
                if i is not None:
                    break
            else:  # pragma: no cover - callers check the total first
                raise RuntimeError("not enough free devices")
            # Take one device but hold the node back until the round ends, so the
            # next device goes to another node whenever one has free devices.
            picked.setdefault(i, []).append(free.free[i].pop(0))
            free.total -= 1
            taken.append(i)
            if not any(free.buckets()[c2] and _live(free, c2) for c2 in range(1, width + 1)):
                # Every other node is full: put the held nodes back and go on with them.
                self._release(free, taken)
        self._release(free, taken)
        return picked

    @staticmethod
    def _release(free: FreeDevices, taken: list[int]) -> None:
        for i in dict.fromkeys(taken):
            if free.free[i]:
                heapq.heappush(free.buckets()[len(free.free[i])], i)
        taken.clear()


def _live(free: FreeDevices, count: int) -> bool:
    """True when bucket `count` holds a node that really has `count` free devices."""
    heap = free.buckets()[count]
    while heap and len(free.free[heap[0]]) != count:
        heapq.heappop(heap)
    return bool(heap)


class RandomPlacer(BasePlacer):
    """Uniformly random free devices; the same seed and inputs give the same placement."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)

    def _new_state(self) -> dict[str, Any]:
        # A fresh generator per call keeps the placer a pure function of its inputs.
        return {"rng": random.Random(self.seed), "pool": None}

    def _choose(self, free: FreeDevices, count: int, state: object) -> dict[int, list[int]]:
        assert isinstance(state, dict)
        if state["pool"] is None:  # built after the kept devices are claimed
            state["pool"] = [(i, d) for i, devs in enumerate(free.free) for d in devs]
        pool: list[tuple[int, int]] = state["pool"]
        rng: random.Random = state["rng"]
        picked: dict[int, list[int]] = {}
        for _ in range(count):
            k = rng.randrange(len(pool))
            i, d = pool[k]
            pool[k] = pool[-1]  # swap-remove: O(1) and still deterministic
            pool.pop()
            picked.setdefault(i, []).append(d)
            free.free[i].remove(d)
            free.total -= 1
        return picked

    def __repr__(self) -> str:
        return f"RandomPlacer(seed={self.seed})"


_PLACERS: dict[str, type[BasePlacer]] = {cls.name: cls for cls in (PackPlacer, SpreadPlacer, RandomPlacer)}


def available_placers() -> list[str]:
    """Names of the registered placers, sorted."""
    return sorted(_PLACERS)


def get_placer(name: str, **options: object) -> BasePlacer:
    """A new placer by name (`pack`, `spread`, `random`); UserError names the known ones."""
    cls = _PLACERS.get(name.strip().lower()) if isinstance(name, str) else None
    if cls is None:
        raise UserError(f"unknown placer {name!r}; choose one of: {', '.join(available_placers())}")
    try:
        return cls(**options)
    except TypeError as exc:
        raise UserError(f"placer {name!r}: {exc}") from None
