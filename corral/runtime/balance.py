"""Split a sequence of layers into contiguous pipeline stages that minimise the slowest stage.

Pure logic, no torch: the pipeline strategy profiles each layer and hands the
costs here. `balance` is exact (dynamic programming over split points), not
a greedy heuristic, so the slowest stage is the smallest any contiguous split
can achieve; ties are broken by the largest stage's parameter bytes, then by
the earliest split.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from corral.errors import UserError


@dataclass(frozen=True)
class Split:
    """A contiguous split: the layer count of each stage and each stage's summed cost and bytes."""

    counts: tuple[int, ...]
    costs: tuple[float, ...]
    bytes: tuple[int, ...]

    @property
    def bounds(self) -> tuple[tuple[int, int], ...]:
        """(first layer, one past the last layer) of each stage."""
        out, start = [], 0
        for n in self.counts:
            out.append((start, start + n))
            start += n
        return tuple(out)

    @property
    def slowest(self) -> float:
        """The cost of the slowest stage: what bounds the pipeline's step time."""
        return max(self.costs)


def check_stages(layers: int, stages: int) -> None:
    """A UserError unless `layers` layers can fill `stages` non-empty stages."""
    if stages < 1:
        raise UserError(f"stages must be >= 1, got {stages}")
    if layers < stages:
        raise UserError(f"a model of {layers} layers cannot be split into {stages} stages (each needs >= 1 layer)")


def split_of(counts: Sequence[int], costs: Sequence[float], sizes: Sequence[int] | None = None) -> Split:
    """The Split made of stage layer `counts` over per-layer `costs` (and parameter `sizes`)."""
    sizes = list(sizes) if sizes is not None else [0] * len(costs)
    if any(n < 1 for n in counts) or sum(counts) != len(costs):
        raise UserError(
            f"balance {list(counts)} must be positive layer counts summing to the model's {len(costs)} layers"
        )
    bounds, start = [], 0
    for n in counts:
        bounds.append((start, start + n))
        start += n
    return Split(
        tuple(counts),
        tuple(float(sum(costs[a:b])) for a, b in bounds),
        tuple(int(sum(sizes[a:b])) for a, b in bounds),
    )


def balance(costs: Sequence[float], stages: int, sizes: Sequence[int] | None = None) -> Split:
    """The contiguous split of `costs` into `stages` non-empty stages with the smallest slowest stage."""
    n = len(costs)
    check_stages(n, stages)
    if any(c < 0 for c in costs):
        raise UserError("layer costs must be >= 0")
    sizes = list(sizes) if sizes is not None else [0] * n
    prefix = [0.0]
    for c in costs:
        prefix.append(prefix[-1] + float(c))
    bprefix = [0]
    for s in sizes:
        bprefix.append(bprefix[-1] + int(s))
    inf = (float("inf"), float("inf"))
    # best[k][i]: (slowest cost, largest bytes) splitting the first i layers into k stages; cut[k][i]: last stage start.
    best = [[inf] * (n + 1) for _ in range(stages + 1)]
    cut = [[0] * (n + 1) for _ in range(stages + 1)]
    best[0][0] = (0.0, 0)
    for k in range(1, stages + 1):
        for i in range(k, n - (stages - k) + 1):
            for j in range(k - 1, i):
                prev = best[k - 1][j]
                if prev == inf:
                    continue
                cand = (max(prev[0], prefix[i] - prefix[j]), max(prev[1], bprefix[i] - bprefix[j]))
                if cand < best[k][i]:
                    best[k][i], cut[k][i] = cand, j
    counts, i = [], n
    for k in range(stages, 0, -1):
        j = cut[k][i]
        counts.append(i - j)
        i = j
    return split_of(counts[::-1], costs, sizes)
