"""A parameter server: holds one shard, applies the optimizer to it, answers workers by the consistency model.

    python -m corral.runtime.ps.server      (started S times by `corral run --servers S`)

The shard's tensors are views into the frame the server replies with, so a
reply sends the updated values without a copy; under asp and ssp their
gradients are views into the frame pushes arrive in. The optimizer is the
user's class with the user's param-group hyperparameters, built over the shard.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

from corral.runtime import env
from corral.runtime.ps import protocol as proto
from corral.runtime.ps.consistency import ClockGate, Consistency, parse_consistency
from corral.runtime.ps.protocol import Frame, Op

TRACE_DIR = "CORRAL_PS_TRACE"  # tests and benchmarks: write server-K.json (clocks, staleness) here


def import_qualified(path: str) -> Any:
    """The object named "module:qualname"."""
    module, _, qualname = path.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


class Server:
    """One server's shard, optimizer and clocks, driven by messages from the workers."""

    def __init__(self, pg: Any, index: int, workers: int) -> None:
        self.pg = pg
        self.index = index
        self.rank = workers + index
        self.workers = workers
        self.consistency = Consistency("bsp")
        self.gate = ClockGate(workers, self.consistency)
        self.indices: list[int] = []
        self.tensors: list[torch.Tensor] = []
        self.out = Frame([])  # the shard's values (the tensors are views into it), sent as replies
        self.rx = Frame([])  # where the next message arrives
        self.grads: list[torch.Tensor] = []  # bsp: the averaged gradient, one flat buffer per dtype
        self.inbox: dict[int, Frame] = {}  # bsp: each worker's pushed frame until all have arrived
        self.spare: list[Frame] = []  # bsp: frames to receive the next pushes into
        self.opt: torch.optim.Optimizer | None = None
        self.group_ids: list[int] = []
        self._order: list[int] = []  # shard position of each tensor in the shard optimizer's order
        self.updates = 0

    # -- set-up ---------------------------------------------------------------

    def setup(self, spec: dict[str, Any]) -> None:
        """Build the shard, its optimizer (with restored state) and the clocks from rank 0's INIT."""
        self.consistency = parse_consistency(spec["consistency"])
        self.gate = ClockGate(self.workers, self.consistency)
        self.indices = list(spec["indices"])
        self.updates = int(spec["updates"])
        values: list[torch.Tensor] = spec["values"]
        blocks = proto.layout([v.shape for v in values], [v.dtype for v in values])
        bsp = self.consistency.mode == "bsp"
        self.out, self.rx = Frame(blocks), Frame(blocks)
        # bsp averages the pushed frames into these; asp/ssp step on the received frame itself.
        self.grads = [torch.zeros(b.numel, dtype=b.dtype) for b in blocks] if bsp else self.rx.blocks
        self.spare = [Frame(blocks) for _ in range(self.workers)] if bsp else []
        self.tensors = [torch.empty(0)] * len(values)
        for block, flat, gflat in zip(blocks, self.out.blocks, self.grads):
            for pos, off, n in block.members:
                t = flat[off : off + n].view(values[pos].shape)
                t.copy_(values[pos])
                t.grad = gflat[off : off + n].view(values[pos].shape)
                self.tensors[pos] = t
        self.opt = None
        if not values:
            return
        groups: list[int] = spec["groups"]
        self.group_ids = sorted(set(groups))
        param_groups = [
            {**spec["hparams"][g], "params": [self.tensors[i] for i in range(len(values)) if groups[i] == g]}
            for g in self.group_ids
        ]
        self._order = [i for g in self.group_ids for i in range(len(values)) if groups[i] == g]
        cls = import_qualified(spec["optimizer"])
        try:
            self.opt = cls(param_groups, **spec["defaults"])
        except TypeError:  # a constructor that does not take every key of its own defaults
            self.opt = cls(param_groups)
        if spec["state"]:
            # Through load_state_dict, so the optimizer casts its state as it would locally.
            local = {j: spec["state"][i] for j, i in enumerate(self._order) if i in spec["state"]}
            sd = self.opt.state_dict()
            self.opt.load_state_dict({"state": local, "param_groups": sd["param_groups"]})

    # -- the loop ---------------------------------------------------------------

    def run(self) -> None:
        """Serve until rank 0 says SHUTDOWN."""
        op, _, _, _, _ = self._first()
        while op != Op.SHUTDOWN:
            self.rx.recv_any(self.pg).wait()
            op, src, a, _, _ = self.rx.fields()
            if op == Op.PUSH:
                self.on_push(src)
            elif op == Op.PULL:
                self.reply([src])
            elif op == Op.HPARAMS:
                self.set_hparams(proto.recv_data(self.pg, src, a))
            elif op == Op.SNAPSHOT:
                proto.send_small(self.pg, src, Op.STATE, self.rank, self.snapshot())
            elif op != Op.SHUTDOWN:
                raise RuntimeError(f"server {self.index}: unexpected message {op} from rank {src}")

    def _first(self) -> list[int]:
        """Rank 0 speaks first, with INIT: build the shard."""
        fields, spec = proto.recv_small(self.pg, 0)
        if fields[0] == Op.INIT:
            self.setup(spec)
            self._announce()
        return fields

    def on_push(self, worker: int) -> None:
        """A worker's gradients arrived in self.rx: apply them as the consistency model says; answer who may go on."""
        if self.consistency.mode != "bsp":
            if self.opt is not None:
                self.opt.step()  # asp / ssp: every push is applied on arrival (.grad views self.rx)
            self.updates += 1
            self.reply(self.gate.push(worker))
            return
        # bsp: keep the frame until every worker's step-t gradient is here; receive into a spare.
        self.inbox[worker], self.rx = self.rx, self.spare.pop()
        released = self.gate.push(worker)
        if released:
            # Average in rank order (deterministic), then one optimizer step.
            for k, g in enumerate(self.grads):
                g.copy_(self.inbox[0].blocks[k])
                for w in range(1, self.workers):
                    g.add_(self.inbox[w].blocks[k])
                if self.workers > 1:
                    g.div_(self.workers)
            if self.opt is not None:
                self.opt.step()
            self.updates += 1
            self.spare.extend(self.inbox.values())
            self.inbox.clear()
        self.reply(released)

    def reply(self, workers: list[int]) -> None:
        """Send the current values to `workers`, and wait: the next update must not race the sends."""
        self.out.set(Op.REPLY, self.rank, self.updates)
        proto.wait([self.out.send(self.pg, w) for w in workers])

    def set_hparams(self, hparams: dict[int, dict[str, Any]]) -> None:
        """Apply changed hyperparameters (keyed by the user's param-group index) to the shard's groups."""
        if self.opt is None:
            return
        for group, g in zip(self.opt.param_groups, self.group_ids):
            group.update(hparams.get(g, {}))

    def snapshot(self) -> dict[str, Any]:
        """Values and optimizer state of the shard, keyed by the user's optimizer index."""
        state: dict[int, Any] = {}
        if self.opt is not None:
            local = self.opt.state_dict()["state"]
            state = {self.indices[self._order[j]]: s for j, s in local.items()}
        return {
            "indices": self.indices,
            "values": [t.detach().clone() for t in self.tensors],
            "state": state,
            "updates": self.updates,
            "clocks": list(self.gate.clock),
        }

    # -- reporting ----------------------------------------------------------------

    def _announce(self) -> None:
        n = sum(t.numel() for t in self.tensors)
        print(f"serving {len(self.tensors)} tensor(s), {n:,} values, consistency {self.consistency}", flush=True)

    def report(self) -> dict[str, Any]:
        """What this server saw: updates, clocks, and the staleness spread at every reply."""
        return {
            "server": self.index,
            "consistency": str(self.consistency),
            "updates": self.updates,
            "clocks": list(self.gate.clock),
            "spreads": {str(k): v for k, v in sorted(self.gate.spreads.items())},
            "max_spread": self.gate.max_spread(),
            "deferred": self.gate.deferred,
            "replies": self.gate.replies(),
        }


def main() -> int:
    """Entry point of one server process."""
    index, workers, servers = env.ps_server_index(), env.ps_workers(), env.ps_servers()
    if servers < 1 or workers < 1 or not 0 <= index < servers:
        print("error: corral.runtime.ps.server runs under `corral run --servers S`", file=sys.stderr)
        return 2
    # Constructing an optimizer imports torch._dynamo (about 1 s of CPU): do it while the
    # workers start, not after rank 0's INIT arrives.
    torch.optim.SGD([torch.zeros(1, requires_grad=True)])
    _, pg = proto.connect(workers + index, workers + servers)
    server = Server(pg, index, workers)
    server.run()
    report = server.report()
    if server.consistency.mode != "bsp" and server.tensors:
        print(
            f"{report['updates']:,} updates; staleness max {report['max_spread']} step(s); "
            f"{report['deferred']:,} repl{'y' if report['deferred'] == 1 else 'ies'} deferred",
            flush=True,
        )
    trace = os.environ.get(TRACE_DIR)
    if trace:
        Path(trace).mkdir(parents=True, exist_ok=True)
        attempt = env.restart_count()
        (Path(trace) / f"server-{index}-{attempt}.json").write_text(json.dumps(report))
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown (about 0.5 s of CPU with torch loaded): a server holds
    # nothing to flush, and on a small machine the workers need those cycles.
    os._exit(code)
