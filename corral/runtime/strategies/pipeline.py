"""`pipeline`: model parallelism over `torch.distributed.pipelining`, with auto-balanced stages and DP x PP.

    job = corral.init(strategy="pipeline", stages=2, microbatches=4, schedule="1f1b", balance="auto")
    model, opt, loader = job.prepare(nn.Sequential(...), opt, dataset, batch_size=32)
    for x, y in loader:
        loss = job.step(loss_fn=F.cross_entropy, inputs=x, target=y)

The model is an `nn.Sequential`; its layers are split into `stages`
contiguous stages (two per rank with `schedule="interleaved"`), chosen by
profiling each layer's forward and backward on the first batch
(`balance="auto"`) or given as layer counts. With WORLD_SIZE = dp x stages,
the ranks form a ("dp", "pp") device mesh: rank r runs pipeline stage
r % stages of replica r // stages, and each stage is replicated data-parallel
with DDP over its "dp" group. Checkpoints hold the whole model under the
user's parameter names, so a pipeline job resumes at another stage count,
at another dp, or under `ddp`, and a `ddp` checkpoint resumes here.
"""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from corral.errors import UserError
from corral.runtime import balance as bal
from corral.runtime.strategies import optim_state
from corral.runtime.strategies.base import Context, MicroStep, Strategy, check_int

SCHEDULES = ("1f1b", "gpipe", "interleaved")
PROFILE_REPEATS = 3


class PipelineStrategy(Strategy):
    """Pipeline model parallel (GPipe, 1F1B, interleaved 1F1B), optionally replicated data-parallel per stage."""

    name = "pipeline"
    options = ("stages", "microbatches", "schedule", "balance")
    precisions = ("fp32", "bf16")  # fp16's GradScaler has no pipelined form here
    syncs_in_backward = False  # every job.step syncs its stage's replicas in the schedule's last backward

    def __init__(
        self,
        ctx: Context,
        stages: int | None = None,
        microbatches: int | None = None,
        schedule: str = "1f1b",
        balance: str | list[int] = "auto",
        **unknown: Any,
    ) -> None:
        super().__init__(ctx, **unknown)
        if stages is None:
            raise UserError("strategy 'pipeline' needs stages=P (the number of pipeline stages)")
        check_int("stages", stages, 1)
        if ctx.world_size % stages:
            raise UserError(
                f"stages={stages} does not divide WORLD_SIZE={ctx.world_size}: dp x pp must equal WORLD_SIZE "
                f"(dp x {stages} != {ctx.world_size}); run {stages} x dp ranks"
            )
        if schedule not in SCHEDULES:
            raise UserError(f"unknown schedule {schedule!r}; choose one of: {', '.join(SCHEDULES)}")
        microbatches = stages if microbatches is None else microbatches
        check_int("microbatches", microbatches, stages, shown=f"stages ({stages})")
        if schedule == "interleaved" and microbatches % stages:
            raise UserError(
                f"schedule 'interleaved' needs microbatches ({microbatches}) a multiple of stages ({stages})"
            )
        if balance != "auto" and not (
            isinstance(balance, (list, tuple)) and all(isinstance(n, int) and not isinstance(n, bool) for n in balance)
        ):
            raise UserError(f"balance must be 'auto' or a list of layer counts per stage, got {balance!r}")
        self.pp = stages
        self.dp = ctx.world_size // stages
        self.pp_rank = ctx.rank % stages
        self._dp_rank = ctx.rank // stages
        self.microbatches = microbatches
        self.schedule_name = schedule
        self.balance = balance
        self.virtual = 2 if schedule == "interleaved" else 1  # stages per rank
        self.split: bal.Split | None = None
        self._mesh: Any = None
        self._modules: list[nn.Module] = []  # this rank's stage modules (DDP-wrapped when dp > 1)
        self._stage_ids: list[int] = []
        self._schedule: Any = None
        self._loss_fn: Callable[..., torch.Tensor] | None = None

    # -- topology ------------------------------------------------------------------------

    @property
    def dp_rank(self) -> int:
        return self._dp_rank

    @property
    def dp_size(self) -> int:
        return self.dp

    @property
    def pp_group(self) -> Any:
        """The process group of this rank's pipeline (its replica's stages)."""
        return self._mesh["pp"].get_group()

    @property
    def stages_total(self) -> int:
        """Pipeline stages in all (two per rank when interleaved)."""
        return self.pp * self.virtual

    # -- set-up ----------------------------------------------------------------------------

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer, sample: Callable[[], Any]) -> nn.Module:
        """Split `model` (an nn.Sequential) into stages, keep this rank's, and build the schedule's stages."""
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.pipelining import PipelineStage

        if not isinstance(model, nn.Sequential):
            raise UserError(
                f"strategy 'pipeline' splits an nn.Sequential into stages, got {type(model).__name__}: "
                "write the model as nn.Sequential(embedding, *blocks, head)"
            )
        layers = list(model.named_children())
        bal.check_stages(len(layers), self.stages_total)
        if not dist.is_initialized():
            raise UserError("strategy 'pipeline' runs under a launcher: corral run --nproc N script.py")
        self.param_names = {id(p): n for n, p in model.named_parameters()}
        sizes = [sum(p.numel() * p.element_size() for p in m.parameters()) for _, m in layers]
        if self.balance == "auto":
            costs = self._profile([m for _, m in layers], sample)
            self.split = bal.balance(costs, self.stages_total, sizes)
        else:
            counts = [int(n) for n in self.balance]
            if len(counts) != self.stages_total:
                raise UserError(
                    f"balance {counts} has {len(counts)} stages, the pipeline {self.stages_total} "
                    f"(stages={self.pp}{' x 2 interleaved' if self.virtual == 2 else ''})"
                )
            self.split = bal.split_of(counts, [0.0] * len(layers), sizes)
        self._report_split()
        self._mesh = init_device_mesh(self.device.type, (self.dp, self.pp), mesh_dim_names=("dp", "pp"))
        # Virtual stage s lives on pipeline rank s % pp (interleaved: stages r and r + pp on rank r).
        self._stage_ids = [self.pp_rank + k * self.pp for k in range(self.virtual)]
        keep: set[int] = set()
        stages = []
        for s in self._stage_ids:
            a, b = self.split.bounds[s]
            sub = nn.Sequential(OrderedDict(layers[a:b]))  # the user's layer names: state_dict keys match
            keep |= {id(p) for p in sub.parameters()}
            if self.ctx.precision == "bf16":
                sub.forward = torch.autocast(self.device.type, dtype=torch.bfloat16)(sub.forward)  # type: ignore[method-assign]
            module: nn.Module = sub
            if self.dp > 1:
                # find_unused_parameters keeps GPipe and interleaved exact under DDP (1F1B is exact either way);
                # static_graph would be silently wrong for all three (see TORCH-NOTES).
                module = nn.parallel.DistributedDataParallel(
                    sub,
                    process_group=self._mesh["dp"].get_group(),
                    find_unused_parameters=self.schedule_name != "1f1b",
                )
            self._modules.append(module)
            stages.append(PipelineStage(module, s, self.stages_total, self.device, group=self.pp_group))
        # The optimizer keeps only this rank's parameters; the others' memory is given back.
        for group in optimizer.param_groups:
            group["params"] = [p for p in group["params"] if id(p) in keep]
        optimizer.state.clear()
        for p in model.parameters():
            if id(p) not in keep:
                p.data = torch.empty(0, dtype=p.dtype, device=p.device)
                p.grad = None
        self._schedule = self._build_schedule(stages)
        return model

    def _build_schedule(self, stages: list[Any]) -> Any:
        from torch.distributed.pipelining import Schedule1F1B, ScheduleGPipe, ScheduleInterleaved1F1B

        # The loss is divided here, not by the schedule's scale_grads: that divides the whole .grad in
        # place, which would shrink what earlier micro-steps of an accumulation window left there.
        scale = float(self.microbatches * self.ctx.grad_accum)

        def loss_fn(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            assert self._loss_fn is not None
            return self._loss_fn(output, target) / scale

        if self.schedule_name == "interleaved":
            return ScheduleInterleaved1F1B(stages, self.microbatches, loss_fn=loss_fn, scale_grads=False)
        cls = Schedule1F1B if self.schedule_name == "1f1b" else ScheduleGPipe
        return cls(stages[0], self.microbatches, loss_fn=loss_fn, scale_grads=False)

    def _profile(self, layers: list[nn.Module], sample: Callable[[], Any]) -> list[float]:
        """Each layer's forward + backward seconds on the first batch (best of 3, fastest rank: all ranks agree)."""
        batch = sample()
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        costs = []
        for layer in layers:
            best = float("inf")
            out = x
            for _ in range(PROFILE_REPEATS):
                inp = x.detach().requires_grad_(x.is_floating_point())
                t0 = time.perf_counter()
                out = layer(inp)
                if out.requires_grad:
                    out.float().sum().backward()
                best = min(best, time.perf_counter() - t0)
            layer.zero_grad(set_to_none=True)
            costs.append(best)
            x = out.detach()
        t = torch.tensor(costs, dtype=torch.float64)
        # Every rank must choose the same split. The fastest rank's figure is the least disturbed one
        # (ranks that share cores, or a straggler, only add noise); MIN is also what every rank agrees on.
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return [float(v) for v in t.tolist()]

    def _report_split(self) -> None:
        assert self.split is not None
        if self.ctx.rank == 0:
            how = "auto-balanced" if self.balance == "auto" else "as given"
            costs = ", ".join(f"{c * 1e3:.2f}" for c in self.split.costs)
            mb = ", ".join(f"{b / 2**20:.2f}" for b in self.split.bytes)
            print(
                f"[corral] pipeline: {self.stages_total} stages ({how}) of layers {list(self.split.counts)}; "
                f"forward+backward ms per stage [{costs}]; parameter MB per stage [{mb}]; "
                f"schedule {self.schedule_name}, {self.microbatches} microbatches, dp {self.dp}",
                flush=True,
            )

    # -- the step ----------------------------------------------------------------------------

    def forward_backward(
        self, model: nn.Module, work: MicroStep, backward: Callable[[torch.Tensor], None]
    ) -> torch.Tensor:
        """Run the pipeline schedule over this micro-step's batch; the last stage's mean loss, on every rank."""
        if work.loss is not None or work.loss_fn is None:
            raise UserError(
                "under strategy 'pipeline' the schedule runs the forward: call "
                "job.step(loss_fn=..., inputs=x, target=y) instead of job.step(loss)"
            )
        batch = _batch_size(work.inputs)
        if batch % self.microbatches:
            raise UserError(
                f"the batch of {batch} samples does not divide into microbatches={self.microbatches}; "
                "choose a batch size that is a multiple of it (and drop_last=True in prepare)"
            )
        self._loss_fn = work.loss_fn
        first = 0 in self._stage_ids
        last = self.stages_total - 1 in self._stage_ids
        losses: list[torch.Tensor] = []
        args = (work.inputs,) if first else ()
        kwargs: dict[str, Any] = {"target": work.target, "losses": losses} if last else {}
        self._schedule.step(*args, **kwargs)
        loss = torch.zeros((), dtype=torch.float64)
        if last:
            loss = torch.stack([v.detach().double() for v in losses]).sum() * self.ctx.grad_accum
        # The last stage's pipeline rank sends the loss to its peers: job.log(loss=...) works everywhere.
        dist.broadcast(loss, group=self.pp_group, group_src=self.pp - 1)
        return loss

    @contextlib.contextmanager
    def no_sync(self, model: nn.Module) -> Iterator[None]:
        yield  # the schedule syncs each step's gradients in its last backward

    def reduce_accumulated(self, model: nn.Module) -> None:
        """Nothing left local: every step's gradients were averaged over the replicas in backward."""

    def _params(self) -> list[nn.Parameter]:
        return [p for m in self._modules for p in m.parameters()]

    def clip_grad_norm(self, model: nn.Module, max_norm: float) -> None:
        """Clip by the norm of the whole model's gradient: the stages' squared norms summed over the pipeline."""
        grads = [p.grad for p in self._params() if p.grad is not None]
        sq = torch.zeros((), dtype=torch.float64)
        for g in grads:
            sq += g.detach().double().pow(2).sum()
        dist.all_reduce(sq, group=self.pp_group)
        coef = max_norm / (float(sq.sqrt()) + 1e-6)
        if coef < 1.0:
            for g in grads:
                g.mul_(coef)

    def predict(self, model: nn.Module, inputs: Any) -> Any:
        """Run the stages in order on `inputs` without gradients; every rank of the pipeline gets the output."""
        group = self.pp_group
        x = inputs
        with torch.no_grad():
            for s in range(self.stages_total):
                holder = s % self.pp
                if holder == self.pp_rank:
                    x = self._local_stage(s)(x)
                box = [x if holder == self.pp_rank else None]
                dist.broadcast_object_list(box, group=group, group_src=holder, device=torch.device("cpu"))
                x = box[0].to(self.device) if isinstance(box[0], torch.Tensor) else box[0]
        return x

    def _local_stage(self, s: int) -> nn.Module:
        module = self._modules[self._stage_ids.index(s)]
        return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module

    # -- checkpoints ------------------------------------------------------------------------------

    def _stage_states(self, optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, Any]]:
        state: dict[str, Any] = {}
        for s in self._stage_ids:
            state.update({k: v.detach().cpu() for k, v in self._local_stage(s).state_dict().items()})
        return state, optim_state.named_state(optimizer, self.param_names)

    def gather_state(
        self, model: nn.Module, optimizer: torch.optim.Optimizer
    ) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """Every stage sends its layers and optimizer state to rank 0, which reassembles the whole model."""
        mine = self._stage_states(optimizer) if self._dp_rank == 0 else None
        parts: list[Any] = [None] * self.ctx.world_size if self.ctx.rank == 0 else []
        dist.gather_object(mine, parts if self.ctx.rank == 0 else None, dst=0)
        if self.ctx.rank != 0:
            return None
        stages = [p for p in parts if p is not None]  # replica 0's stages, in pipeline order
        full: dict[str, Any] = {}
        for state, _ in stages:
            full.update(state)
        ordered = OrderedDict(sorted(full.items(), key=lambda kv: _layer_order(kv[0])))
        return dict(ordered), optim_state.merge(o for _, o in stages)

    def load_state(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any], optim: dict[str, Any]
    ) -> None:
        """Load this rank's layers out of a whole-model state (saved by any stage count, or by ddp)."""
        for s in self._stage_ids:
            stage = self._local_stage(s)
            names = {n for n, _ in stage.named_children()}
            stage.load_state_dict({k: v for k, v in state.items() if k.split(".", 1)[0] in names})
        if optim.get("format") != optim_state.FORMAT:
            raise UserError("this checkpoint's optimizer state predates named state; it cannot be split into stages")
        optim_state.load_named_state(optimizer, optim, self.param_names)


def _layer_order(key: str) -> tuple[int, str]:
    head = key.split(".", 1)[0]
    return (int(head) if head.isdigit() else 1 << 30, key)


def _batch_size(inputs: Any) -> int:
    if isinstance(inputs, torch.Tensor):
        return int(inputs.shape[0])
    raise UserError(f"strategy 'pipeline' takes inputs= as one tensor (a batch), got {type(inputs).__name__}")
