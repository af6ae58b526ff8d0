"""Consistency models and the server-side gate that decides when a worker gets its reply.

- bsp: a server applies step t once every worker's gradient for t has arrived
  (averaged), then replies to all: synchronous data parallelism.
- asp: every push is applied on arrival and answered at once.
- ssp:<s>: pushes are applied on arrival; a worker's reply (the parameters it
  computes its next step on) waits while it would be more than s steps ahead
  of the slowest worker.

A worker's clock is the number of its steps the server has answered. The gate
is pure (no I/O) so its invariant, max(clock) - min(clock) <= s after every
reply, is tested without processes.
"""

from __future__ import annotations

from dataclasses import dataclass

from corral.errors import UserError

CONSISTENCIES = ("bsp", "asp", "ssp:<s>")


@dataclass(frozen=True)
class Consistency:
    """A parsed consistency model: mode "bsp", "asp" or "ssp" with its staleness bound."""

    mode: str
    staleness: int = 0

    def __str__(self) -> str:
        return f"ssp:{self.staleness}" if self.mode == "ssp" else self.mode

    @property
    def bound(self) -> int | None:
        """Most steps a worker may be ahead of the slowest (None: unbounded)."""
        return {"bsp": 0, "asp": None}.get(self.mode, self.staleness)


def parse_consistency(spec: object) -> Consistency:
    """Parse "bsp", "asp" or "ssp:<s>" (s an integer >= 0); a UserError names what is wrong."""
    if isinstance(spec, Consistency):
        return spec
    if spec in ("bsp", "asp"):
        return Consistency(str(spec))
    if isinstance(spec, str) and spec.strip() == "ssp":
        raise UserError("consistency 'ssp' needs a staleness bound: write ssp:<s>, e.g. 'ssp:2'")
    if isinstance(spec, str) and spec.startswith("ssp:"):
        raw = spec[4:].strip()
        if not raw.isdigit():
            raise UserError(f"the staleness bound in {spec!r} must be an integer >= 0, e.g. 'ssp:2'")
        return Consistency("ssp", int(raw))
    raise UserError(f"unknown consistency {spec!r}; choose one of: {', '.join(CONSISTENCIES)}")


class ClockGate:
    """Per-worker clocks on one server, and which pushed workers may be answered now."""

    def __init__(self, workers: int, consistency: Consistency) -> None:
        self.workers = workers
        self.bound = consistency.bound
        self.clock = [0] * workers
        self.pending: set[int] = set()
        # max(clock) - min(clock) after each reply -> how many replies saw it (a histogram,
        # so a long run's record stays small).
        self.spreads: dict[int, int] = {}
        self.deferred = 0  # pushes not answered on arrival

    def push(self, worker: int) -> list[int]:
        """Record that `worker` pushed its next step; return the workers to answer now (ascending)."""
        if worker in self.pending:
            raise RuntimeError(f"worker {worker} pushed again before its reply")
        self.pending.add(worker)
        released = self._release()
        if worker not in released:
            self.deferred += 1
        return released

    def _release(self) -> list[int]:
        if not self.pending:
            return []
        chosen = set(self.pending)
        if self.bound is not None:
            # Start from every pending worker and drop the one furthest ahead until the
            # clocks after answering fit the bound. The slowest pending workers always
            # fit (the invariant held before), so the slowest never waits: no deadlock.
            while chosen:
                after = [c + (w in chosen) for w, c in enumerate(self.clock)]
                if max(after) - min(after) <= self.bound:
                    break
                chosen.discard(max(chosen, key=lambda w: (self.clock[w], w)))
        for w in chosen:
            self.clock[w] += 1
        self.pending -= chosen
        if chosen:
            spread = max(self.clock) - min(self.clock)
            self.spreads[spread] = self.spreads.get(spread, 0) + len(chosen)
        return sorted(chosen)

    def max_spread(self) -> int:
        """Largest max(clock) - min(clock) seen after a reply."""
        return max(self.spreads, default=0)

    def replies(self) -> int:
        """Replies sent so far."""
        return sum(self.spreads.values())
