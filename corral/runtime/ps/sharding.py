"""Which server holds which parameter: pure functions, no torch, no processes.

`range` cuts the parameter list into contiguous blocks whose sizes are within
one tensor's size of the ideal (total / servers); `hash` places each parameter
by a stable hash of its name, so a parameter stays on its server when others
are added or removed. Every parameter lives on exactly one server.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from corral.errors import UserError

SHARDINGS = ("range", "hash")


def check_sharding(kind: object) -> str:
    """Return `kind` if it names a sharding, else raise a UserError listing them."""
    if kind not in SHARDINGS:
        raise UserError(f"unknown sharding {kind!r}; choose one of: {', '.join(SHARDINGS)}")
    return str(kind)


def stable_name_hash(name: str) -> int:
    """A 64-bit hash of `name` that every process and every run computes alike (blake2b, never `hash`)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little")


def range_owners(sizes: Sequence[int], servers: int) -> list[int]:
    """Owner of each tensor: contiguous blocks, each within max(sizes) of sum(sizes)/servers.

    Block k ends at the prefix sum nearest to k * ideal. Consecutive prefix sums
    differ by one tensor, so each cut is within half a tensor of its ideal
    position, and each block within one tensor of the ideal size.
    """
    if servers < 1:
        raise UserError(f"servers must be >= 1, got {servers}")
    prefix = [0]
    for s in sizes:
        prefix.append(prefix[-1] + int(s))
    total = prefix[-1]
    cuts = [0]
    j = 0
    for k in range(1, servers):
        target = k * total / servers
        # Move right while the next prefix sum is at least as close (cuts never go backwards).
        while j < len(sizes) and abs(prefix[j + 1] - target) <= abs(prefix[j] - target):
            j += 1
        cuts.append(j)
    cuts.append(len(sizes))
    owners = [0] * len(sizes)
    for k in range(servers):
        for i in range(cuts[k], cuts[k + 1]):
            owners[i] = k
    return owners


def hash_owners(names: Sequence[str], servers: int) -> list[int]:
    """Owner of each tensor: blake2b(name) mod servers."""
    if servers < 1:
        raise UserError(f"servers must be >= 1, got {servers}")
    return [stable_name_hash(n) % servers for n in names]


def assign(names: Sequence[str], sizes: Sequence[int], servers: int, kind: str = "range") -> list[int]:
    """The server that owns each parameter (given by name and number of elements)."""
    check_sharding(kind)
    if len(names) != len(sizes):
        raise ValueError("names and sizes must have the same length")
    return range_owners(sizes, servers) if kind == "range" else hash_owners(names, servers)


def shards(owners: Sequence[int], servers: int) -> list[list[int]]:
    """Indices of the parameters each server owns, in parameter order."""
    out: list[list[int]] = [[] for _ in range(servers)]
    for i, k in enumerate(owners):
        out[k].append(i)
    return out
