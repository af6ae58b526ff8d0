"""The `ps` strategy, worker side: push each step's gradients to the servers, pull the updated shards back.

    job = corral.init(strategy="ps", servers=2, consistency="ssp:2", sharding="range")

Run under `corral run --nproc N --servers S`. Each worker keeps a full replica
of the model for forward and backward; the optimizer runs on the servers, each
over its shard. A step is one frame to each server (gradients) and one back
(values); on CPU the replica's parameters are views into the receive frames,
so the servers' values land in the model without a copy.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from corral.errors import UserError
from corral.runtime import env
from corral.runtime.ps import protocol as proto
from corral.runtime.ps.consistency import parse_consistency
from corral.runtime.ps.protocol import Frame, Op
from corral.runtime.ps.sharding import assign, check_sharding, shards
from corral.runtime.strategies import optim_state
from corral.runtime.strategies.base import Context, Strategy, check_int


def _hparams(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    return [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]


class _Shard:
    """A worker's frames for one server: gradients out (tx), values back (rx)."""

    def __init__(self, server: int, rank: int, params: list[nn.Parameter], zero_copy: bool) -> None:
        self.server = server
        self.rank = rank  # the server's rank in the PS group
        self.params = params
        self.blocks = proto.layout([p.shape for p in params], [p.dtype for p in params])
        self.tx, self.rx = Frame(self.blocks), Frame(self.blocks)
        self.views: list[tuple[nn.Parameter, torch.Tensor]] = []
        for block, flat in zip(self.blocks, self.rx.blocks):
            for pos, off, n in block.members:
                p = params[pos]
                view = flat[off : off + n].view(p.shape)
                view.copy_(p.detach())
                if zero_copy:
                    p.data = view  # the replica reads the receive buffer itself
                else:
                    self.views.append((p, view))

    def pack(self) -> None:
        """Copy this step's gradients into the send buffers (a missing gradient counts as zero)."""
        for block, flat in zip(self.blocks, self.tx.blocks):
            grads = [
                torch.zeros_like(self.params[pos]) if (g := self.params[pos].grad) is None else g
                for pos, _, _ in block.members
            ]
            if flat.device == grads[0].device:
                torch.cat([g.reshape(-1) for g in grads], out=flat)
            else:  # a GPU replica: gather on the device, one copy to the host frame
                flat.copy_(torch.cat([g.reshape(-1) for g in grads]))

    def unpack(self) -> None:
        """Copy received values into parameters that are not views of the buffers (a GPU replica)."""
        for p, view in self.views:
            p.data.copy_(view, non_blocking=True)


class PSStrategy(Strategy):
    """Parameter server: sharded parameters and optimizer on S server processes; bsp, asp or ssp:<s>."""

    name = "ps"
    syncs_in_backward = False  # micro-steps accumulate locally; the step pushes what accumulated

    options = ("servers", "consistency", "sharding")
    # Its GradScaler would step a local optimizer; the optimizer runs on the servers.
    precisions = ("fp32", "bf16")

    def __init__(
        self,
        ctx: Context,
        servers: int | None = None,
        consistency: str = "bsp",
        sharding: str = "range",
        **unknown: Any,
    ) -> None:
        super().__init__(ctx, **unknown)
        if servers is not None:
            check_int("servers", servers, 1)
        self.consistency = parse_consistency(consistency)
        self.sharding = check_sharding(sharding)
        launched = env.ps_servers()
        if launched < 1:
            raise UserError(
                f"strategy 'ps' needs parameter servers: start the job with `corral run --servers {servers or 'S'} ...`"
            )
        if servers is not None and servers != launched:
            raise UserError(
                f"corral.init(servers={servers}) but `corral run` started {launched} server(s); "
                f"run it with --servers {servers} or pass servers={launched}"
            )
        self.servers = launched
        # Asynchronous workers take different numbers of steps: no collective may follow a step.
        self.lockstep = self.consistency.mode != "asp"
        self.rank = ctx.rank
        self._job: Any = None
        self._pg: Any = None
        self._store: Any = None
        self._shards: list[_Shard] = []  # servers that hold tensors
        self._all: list[_Shard] = []
        self._params: list[nn.Parameter] = []
        self._sent_hparams: list[dict[str, Any]] = []
        self._snapshot_state: dict[int, Any] | None = None
        self._step = 0

    # -- set-up ---------------------------------------------------------------

    def attach(self, job: Any, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Shard the optimizer's parameters, start the servers on them (rank 0), and pull the initial values."""
        cls = type(optimizer)
        if cls.__module__ == "__main__":
            raise UserError(
                f"strategy 'ps' builds the optimizer on the servers: move {cls.__name__} out of the "
                "script into a module they can import"
            )
        self._job = job
        params = [p for g in optimizer.param_groups for p in g["params"]]
        group_of = [gi for gi, g in enumerate(optimizer.param_groups) for _ in g["params"]]
        names = {id(p): n for n, p in model.named_parameters()}
        if any(id(p) not in names for p in params):
            raise UserError("the optimizer holds a tensor that is not a parameter of the model")
        owners = assign([names[id(p)] for p in params], [p.numel() for p in params], self.servers, self.sharding)
        self._params = params
        self._store, self._pg = proto.connect(job.rank, job.world_size + self.servers)
        placed = shards(owners, self.servers)
        if job.rank == 0:
            hparams = _hparams(optimizer)
            for k, idx in enumerate(placed):
                spec: dict[str, Any] = {
                    "consistency": str(self.consistency),
                    "indices": idx,
                    "values": [params[i].detach().cpu().clone() for i in idx],
                    "groups": [group_of[i] for i in idx],
                    "hparams": hparams,
                    "defaults": dict(optimizer.defaults),
                    "optimizer": f"{cls.__module__}:{cls.__qualname__}",
                    # Restored optimizer state (a checkpoint), by position in the shard.
                    "state": {
                        pos: _to_cpu(optimizer.state[params[i]])
                        for pos, i in enumerate(idx)
                        if optimizer.state.get(params[i])
                    },
                    "updates": job.step_count,
                }
                proto.send_small(self._pg, self._server_rank(k), Op.INIT, 0, spec)
        zero_copy = all(p.device.type == "cpu" for p in params)
        # A frame set for every server (control messages), pushes only to those holding tensors.
        self._all = [
            _Shard(k, self._server_rank(k), [params[i] for i in idx], zero_copy) for k, idx in enumerate(placed)
        ]
        self._shards = [shard for shard in self._all if shard.params]
        optimizer.state.clear()  # it lives on the servers now; checkpoints fetch it from there
        self._sent_hparams = _hparams(optimizer)
        self.pull()  # every replica starts from the servers' values, as DDP broadcasts rank 0's
        if self.consistency.mode != "bsp":
            from corral.runtime.ps.loader import PSLoader

            self.loader_class = PSLoader

    def _server_rank(self, k: int) -> int:
        return self.world_size + k

    # -- the step ---------------------------------------------------------------

    def optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Push this step's gradients to every server and wait for the updated values."""
        self._send_hparams(optimizer)
        self._step += 1
        works: list[Any] = []
        for shard in self._shards:
            shard.pack()
            works += [
                shard.tx.set(Op.PUSH, self.rank, self._step).send(self._pg, shard.rank),
                shard.rx.recv(self._pg, shard.rank),
            ]
        proto.wait(works)
        for shard in self._shards:
            shard.unpack()
        if self.consistency.mode == "asp" and self._shards:
            # The global step: updates the servers applied, as with an asynchronous TF/ps-lite job.
            self._job.step_count = int(self._shards[0].rx.header[2]) - 1  # the Job adds this step

    def pull(self) -> None:
        """Fetch the current values of every shard into the replica."""
        works: list[Any] = []
        for shard in self._shards:
            works += [shard.tx.set(Op.PULL, self.rank).send(self._pg, shard.rank), shard.rx.recv(self._pg, shard.rank)]
        proto.wait(works)
        for shard in self._shards:
            shard.unpack()

    def _send_hparams(self, optimizer: torch.optim.Optimizer) -> None:
        """Forward hyperparameters changed since the last step (an LR scheduler) to the servers."""
        current = _hparams(optimizer)
        if current == self._sent_hparams:
            return
        changed = {
            g: {k: v for k, v in hp.items() if self._sent_hparams[g].get(k) != v} for g, hp in enumerate(current)
        }
        data = proto.encode(changed)
        for shard in self._shards:
            proto.wait(
                [
                    shard.tx.set(Op.HPARAMS, self.rank, data.numel()).send(self._pg, shard.rank),
                    proto.send_data(self._pg, shard.rank, data),
                ]
            )
        self._sent_hparams = current

    # -- coordination of the asynchronous modes (used by the loader) ------------------

    def claim(self, key: str, n: int = 1) -> int:
        """Atomically add `n` to the shared counter `key` (the launcher's store); return the new value."""
        return int(self._store.add(f"{proto.STORE_PREFIX}/{key}", n))

    def agree(self, values: list[int]) -> list[int]:
        """Sum `values` over the workers (a collective on the workers' own process group)."""
        t = torch.tensor(values, dtype=torch.int64)
        if self._job.distributed:
            dist.all_reduce(t)
        return [int(v) for v in t.tolist()]

    def sync_replicas(self) -> None:
        """Wait for every worker, then pull: every replica holds the servers' final values."""
        if self._job.distributed:
            dist.barrier()
        self.pull()

    # -- checkpoints and the end ---------------------------------------------------------

    def gather_state(
        self, model: nn.Module, optimizer: torch.optim.Optimizer
    ) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """Rank 0: fetch every shard (values and optimizer state) from the servers: the full model and optimizer."""
        if self.rank != 0:
            return None
        if self._pg is None:
            return super().gather_state(model, optimizer)
        state: dict[int, Any] = {}
        for shard in self._all:
            shard.tx.set(Op.SNAPSHOT, self.rank).send(self._pg, shard.rank).wait()
            _, snap = proto.recv_small(self._pg, shard.rank)
            with torch.no_grad():
                for i, value in zip(snap["indices"], snap["values"]):
                    self._params[i].data.copy_(value)
            state.update(snap["state"])
        # The servers' state, by position in the optimizer as torch numbers it: loadable by a local optimizer too.
        sd = optimizer.state_dict()
        sd["state"] = state
        return self.unwrap(model).state_dict(), optim_state.named_state(optimizer, self.param_names, sd)

    def close(self) -> None:
        """Rank 0 tells the servers the job is done (every worker has passed the final barrier)."""
        if self._pg is not None and self.rank == 0:
            proto.wait([shard.tx.set(Op.SHUTDOWN, self.rank).send(self._pg, shard.rank) for shard in self._all])
        self._pg = None


def _to_cpu(state: dict[str, Any]) -> dict[str, Any]:
    return {k: v.detach().cpu().clone() if isinstance(v, torch.Tensor) else v for k, v in state.items()}
