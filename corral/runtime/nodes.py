"""The launchers of a static multi-node `corral run` agree on each attempt through one control store.

`corral run --nnodes N --node-rank R --master-addr H --master-port P` on N hosts forms one gang. Node 0's
launcher hosts a TCPStore on H:P for the whole run (the control store); the others connect to it. For
attempt g:

- node 0 starts a fresh rendezvous store on a free port (a restarted gang must never read a dead gang's
  keys: TORCH-NOTES) and publishes its port under `g/port`; every node starts its local workers against it;
- a node whose worker fails writes `g/failed` (which rank, how) at once, and every node's launcher, polling
  that key while it watches its workers, stops its own: a failure on one host stops the gang on all, without
  waiting for gloo's timeout;
- when its workers have ended, each node writes `g/end/R` (succeeded, preempted or failed) and waits for every
  node's, so that all launchers take the same decision: restart (attempt g+1) when any failed and restarts
  remain, else end with the gang's outcome.

Node 0 keeps the control store up until every node has written its last end, then closes it. A node that
loses the control store (node 0's launcher died) stops its workers and ends with one `error:` line (NodeLost).
"""

from __future__ import annotations

import datetime as dt
import functools
import json
from collections.abc import Callable
from typing import Any, TypeVar

from corral.errors import UserError

POLL_S = 0.2  # how often a launcher looks for another node's failure while its workers run
JOIN_TIMEOUT_S = 300.0  # nodes started by hand come up minutes apart, as with torchrun's join timeout

F = TypeVar("F", bound=Callable[..., Any])


class NodeLost(UserError):
    """The control store went away mid-run: node 0's launcher ended or the network between nodes broke."""

    exit_code = 1


def _lost_is_one_line(method: F) -> F:
    """Turn the store's RuntimeError (peer gone, timeout) into NodeLost, so the CLI prints one line."""

    @functools.wraps(method)
    def wrapper(self: NodeGroup, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except (RuntimeError, OSError) as exc:
            raise NodeLost(f"lost the control store of node 0 ({self.where}): {str(exc).splitlines()[0]}") from exc

    return wrapper  # type: ignore[return-value]


class NodeGroup:
    """This launcher's handle on the control store shared by the nodes of one run."""

    def __init__(self, addr: str, port: int, nnodes: int, node_rank: int, *, timeout_s: float = JOIN_TIMEOUT_S):
        from torch.distributed import TCPStore

        self.nnodes, self.node_rank = nnodes, node_rank
        self.where = f"{addr}:{port}"
        try:
            self.store = TCPStore(
                addr,
                port,
                nnodes,
                is_master=node_rank == 0,
                wait_for_workers=False,
                timeout=dt.timedelta(seconds=timeout_s),
            )
        except (RuntimeError, OSError) as exc:
            if node_rank == 0:
                raise UserError(
                    f"--master-port {port} is already in use (or cannot be bound) on this node (node 0)"
                ) from exc
            raise UserError(f"cannot reach node 0's launcher at {addr}:{port} within {timeout_s:.0f} s") from exc
        self._last_poll = 0.0

    @_lost_is_one_line
    def announce(self, attempt: int, port: int) -> None:
        """Node 0: the rendezvous port of `attempt`."""
        self.store.set(f"{attempt}/port", str(port))

    @_lost_is_one_line
    def rendezvous_port(self, attempt: int) -> int:
        """The rendezvous port of `attempt`, waiting for node 0 to publish it."""
        return int(self.store.get(f"{attempt}/port").decode())

    @_lost_is_one_line
    def fail(self, attempt: int, what: dict[str, Any]) -> None:
        """Tell every node that a worker of this node failed in `attempt` (the first writer's report stays)."""
        self.store.compare_set(f"{attempt}/failed", "", json.dumps({"node": self.node_rank, **what}))

    @_lost_is_one_line
    def failure(self, attempt: int) -> dict[str, Any] | None:
        """The failure some node reported in `attempt`, if any."""
        key = f"{attempt}/failed"
        if not self.store.check([key]):
            return None
        return dict(json.loads(self.store.get(key).decode()))

    @_lost_is_one_line
    def end(self, attempt: int, state: str) -> list[str]:
        """Record how this node's workers ended `attempt`; wait for every node's and return them by node."""
        self.store.set(f"{attempt}/end/{self.node_rank}", state)
        keys = [f"{attempt}/end/{n}" for n in range(self.nnodes)]
        self.store.wait(keys)
        return [self.store.get(k).decode() for k in keys]

    def close(self, attempt: int) -> None:
        """Leave the run; node 0 waits until every node has read the last decision, then stops the store."""
        try:
            self.store.set(f"{attempt}/left/{self.node_rank}", "1")
            if self.node_rank == 0:
                self.store.wait([f"{attempt}/left/{n}" for n in range(self.nnodes)])
        except RuntimeError:
            pass  # a node (or node 0) gone after the decision: nothing left to tell or hear
        del self.store
