"""Data partitioning over workers: pure functions plus a resumable, elastic sampler plan.

An epoch is a deterministic order of sample indices (a function of seed and
epoch). A partitioner splits an order into one part per rank. Resuming is
exact: the sampler state records, for each segment of the epoch that already
ran, the world size and how many samples each rank consumed; the samples
still to see are the epoch's order minus those, and they are partitioned
again at whatever world size the job resumes with.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from corral.errors import UserError

PARTITIONS = ("strided", "range", "hash", "balanced")

KeyFn = Callable[[int], Any]


def check_partition(kind: str) -> str:
    """Return `kind` if it names a partitioner, else raise a UserError listing them."""
    if kind not in PARTITIONS:
        raise UserError(f"unknown partition {kind!r}; choose one of: {', '.join(PARTITIONS)}")
    return kind


def epoch_order(n: int, *, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The order of all `n` sample indices in `epoch`: a seeded permutation, or 0..n-1."""
    if not shuffle:
        return np.arange(n, dtype=np.int64)
    # A (seed, epoch) pair seeds the generator directly, so every rank and
    # every restart computes the same permutation with no communication.
    return np.random.default_rng([seed, epoch]).permutation(n).astype(np.int64)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """A fixed 64-bit integer mix (never Python's salted `hash`)."""
    with np.errstate(over="ignore"):
        z = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def stable_hash(indices: np.ndarray, key: KeyFn | None = None) -> np.ndarray:
    """A hash of each sample (its index, or `key(index)` when given) that is the same in every process."""
    if key is None:
        return _splitmix64(np.asarray(indices, dtype=np.int64))
    out = np.empty(len(indices), dtype=np.uint64)
    for j, i in enumerate(indices):
        digest = hashlib.blake2b(str(key(int(i))).encode(), digest_size=8).digest()
        out[j] = int.from_bytes(digest, "little")
    return out


def partition(
    order: np.ndarray,
    world_size: int,
    kind: str = "strided",
    *,
    costs: Sequence[float] | np.ndarray | None = None,
    key: KeyFn | None = None,
) -> list[np.ndarray]:
    """Split `order` (sample indices) into `world_size` disjoint parts that together hold every index once."""
    check_partition(kind)
    if world_size < 1:
        raise UserError(f"world size must be >= 1, got {world_size}")
    order = np.asarray(order, dtype=np.int64)
    if kind == "strided":
        return [order[r::world_size] for r in range(world_size)]
    if kind == "range":
        return [np.asarray(p) for p in np.array_split(order, world_size)]
    if kind == "hash":
        owner = stable_hash(order, key) % np.uint64(world_size)
        return [order[owner == r] for r in range(world_size)]
    if costs is None:
        raise UserError("partition 'balanced' needs a per-sample cost (costs=...)")
    return _balanced(order, world_size, np.asarray(costs, dtype=np.float64))


def _balanced(order: np.ndarray, world_size: int, costs: np.ndarray) -> list[np.ndarray]:
    """Greedy longest-first: each sample, costliest first, goes to the least-loaded rank."""
    sample_costs = costs[order]
    # Stable sort keeps ties in epoch order, so the result is deterministic.
    by_cost = np.argsort(-sample_costs, kind="stable")
    heap = [(0.0, r) for r in range(world_size)]
    owner = np.empty(len(order), dtype=np.int64)
    for pos in by_cost:
        load, r = heapq.heappop(heap)
        owner[pos] = r
        heapq.heappush(heap, (load + float(sample_costs[pos]), r))
    # Within a rank, samples keep the epoch's (shuffled) order.
    return [order[owner == r] for r in range(world_size)]


@dataclass(frozen=True)
class Segment:
    """A finished stretch of an epoch: the world size it ran at and the samples each rank consumed."""

    world_size: int
    consumed: tuple[int, ...]


@dataclass
class EpochPlan:
    """What one rank reads in one epoch, given what earlier segments of the epoch consumed."""

    n: int
    epoch: int
    rank: int
    world_size: int
    batch_size: int
    kind: str = "strided"
    seed: int = 0
    shuffle: bool = True
    drop_last: bool = False
    history: tuple[Segment, ...] = ()
    costs: np.ndarray | None = field(default=None, repr=False)
    key: KeyFn | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        check_partition(self.kind)
        if self.batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {self.batch_size}")
        self.pool = remaining(
            self.n,
            self.epoch,
            self.history,
            kind=self.kind,
            seed=self.seed,
            shuffle=self.shuffle,
            costs=self.costs,
            key=self.key,
        )
        self.parts = partition(self.pool, self.world_size, self.kind, costs=self.costs, key=self.key)
        self.lengths = tuple(len(p) for p in self.parts)
        self.indices = self._even(self.parts[self.rank])

    def _even(self, part: np.ndarray) -> np.ndarray:
        """Pad or trim this rank's part so every rank runs the same number of batches (DDP needs it)."""
        if self.drop_last:
            per_rank = (min(self.lengths) // self.batch_size) * self.batch_size
            return part[:per_rank]
        # Every rank must run the same number of batches (DDP would hang), but
        # not the same number of samples: a shorter last batch is fine. Only a
        # rank that would run one batch fewer repeats samples, as few as it can
        # (like torch's DistributedSampler); a repeat is never counted as consumed.
        b = self.batch_size
        batches = -(-max(self.lengths) // b) if self.lengths else 0
        target = max(len(part), (batches - 1) * b + 1) if batches else 0
        if len(part) >= target:
            return part
        filler = part if len(part) else self.pool[: max(1, target)]
        reps = -(-(target - len(part)) // max(1, len(filler)))
        return np.concatenate([part, np.tile(filler, reps)[: target - len(part)]])

    @property
    def num_batches(self) -> int:
        """Batches each rank runs in (the rest of) this epoch."""
        return -(-len(self.indices) // self.batch_size)

    def batch(self, b: int) -> np.ndarray:
        """Sample indices of this rank's batch number `b`."""
        return self.indices[b * self.batch_size : (b + 1) * self.batch_size]

    def consumed_after(self, batches_done: int) -> Segment:
        """The segment this plan has run after `batches_done` batches on every rank."""
        done = batches_done * self.batch_size
        return Segment(self.world_size, tuple(min(done, length) for length in self.lengths))


def remaining(
    n: int,
    epoch: int,
    history: Sequence[Segment],
    *,
    kind: str = "strided",
    seed: int = 0,
    shuffle: bool = True,
    costs: Sequence[float] | np.ndarray | None = None,
    key: KeyFn | None = None,
) -> np.ndarray:
    """Sample indices of `epoch` not yet consumed by the segments in `history`, in epoch order."""
    pool = epoch_order(n, seed=seed, epoch=epoch, shuffle=shuffle)
    for seg in history:
        parts = partition(pool, seg.world_size, kind, costs=costs, key=key)
        seen = np.concatenate([p[:c] for p, c in zip(parts, seg.consumed, strict=True)]) if parts else pool[:0]
        pool = pool[~np.isin(pool, seen)]
    return pool


def history_from_state(raw: Sequence[Any]) -> tuple[Segment, ...]:
    """Segments from their checkpointed form [[world_size, [consumed...]], ...]."""
    return tuple(Segment(int(w), tuple(int(c) for c in consumed)) for w, consumed in raw)


def history_to_state(history: Sequence[Segment]) -> list[list[Any]]:
    """The checkpointable (plain list) form of `history`."""
    return [[s.world_size, list(s.consumed)] for s in history]
