"""The preemption vote: ranks agree to stop at the same optimizer step without a collective on every step."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

# Ranks agree on a SIGTERM about this often (seconds of training between votes);
# a vote is an all-reduce, too costly on every step of a small model.
VOTE_PERIOD_S = 0.25
VOTE_MAX_INTERVAL = 1000


class StopVote:
    """One small asynchronous all-reduce (MAX over [stop, -interval]) on its own gloo group.

    It carries the stop flag and each rank's proposal for how many steps to wait
    before the next vote, about VOTE_PERIOD_S of work. All ranks read the result
    at the same later step, so they stop at the same step and checkpoint together.
    """

    def __init__(self, distributed: bool) -> None:
        self.requested = False  # this rank got SIGTERM
        # A second gloo group carries the vote, so it never queues behind the gradient all-reduces.
        self._group: Any = dist.new_group(backend="gloo") if distributed else None
        self._flag: torch.Tensor | None = torch.zeros(2) if distributed else None
        self._work: Any = None
        self._next_step = 0

    def should_stop(self, step: int, last_step_s: float) -> bool:
        """At optimizer step `step`: True on every rank at the same step once any rank asked to stop."""
        if self._flag is None:
            return self.requested
        if step < self._next_step:
            return False
        decided = False
        interval = 1
        if self._work is not None:
            self._work.wait()
            decided = bool(self._flag[0].item() > 0)
            interval = int(-self._flag[1].item())
            self._work = None
        if not decided:
            proposal = max(1, min(VOTE_MAX_INTERVAL, int(VOTE_PERIOD_S / max(last_step_s, 1e-6))))
            self._flag[0] = 1.0 if self.requested else 0.0
            self._flag[1] = -float(proposal)
            self._work = dist.all_reduce(self._flag, op=dist.ReduceOp.MAX, group=self._group, async_op=True)
        self._next_step = step + interval
        return decided

    def wait(self) -> None:
        """Finish a vote in flight (before a barrier or teardown)."""
        if self._work is not None:
            try:
                self._work.wait()
            except Exception:  # noqa: BLE001 - a peer already gone: nothing left to agree on
                pass
            self._work = None

    def release(self) -> None:
        """Drop the group, so that its threads end now rather than at interpreter exit."""
        self._group = None
        self._flag = None
