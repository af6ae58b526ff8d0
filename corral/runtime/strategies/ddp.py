"""`ddp`: synchronous data parallel with torch DistributedDataParallel, optionally compressed or local SGD.

    corral.init(strategy="ddp")                                   # all-reduce every step
    corral.init(strategy="ddp", compression="powersgd:2")         # or "fp16", "bf16"
    corral.init(strategy="ddp", local_sgd=8, local_sgd_warmup=20) # average the models every 8 steps

Local SGD: after `local_sgd_warmup` synchronous steps, each replica steps on
its own gradients (DDP's all-reduce is replaced by a hook that sends nothing)
and every `local_sgd` optimizer steps the replicas' parameters are averaged,
as torch's post-local SGD does. The replicas differ between averages, so each
rank's model and optimizer state go into the checkpoint (its rank state), and
a resumed run continues exactly where the uninterrupted one would be.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from corral.errors import UserError
from corral.runtime.gns import NoiseScale
from corral.runtime.strategies import compression as comp
from corral.runtime.strategies import optim_state
from corral.runtime.strategies.base import Context, Strategy, check_int


class _LocalSGD:
    """The hook's state: DDP's all-reduce while `sync` is True (the warm-up), then none."""

    def __init__(self, sync: bool) -> None:
        self.sync = sync


def _local_sgd_hook(state, bucket):  # noqa: ANN001 - DDP compares annotations with the real classes
    """While warming up, all-reduce as DDP does; afterwards each replica keeps its own gradient."""
    if state.sync:
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

        return default_hooks.allreduce_hook(None, bucket)  # type: ignore[arg-type]
    fut: torch.futures.Future[torch.Tensor] = torch.futures.Future()
    fut.set_result(bucket.buffer())
    return fut


ONE_REPLICA_EVERY = 16  # one replica: estimate the noise scale on one pair of successive steps in this many


class _Meter:
    """Squared gradient norms of this step: this replica's before the all-reduce, the average's after it."""

    def __init__(self, inner_state: Any, inner: Any) -> None:
        self.inner_state = inner_state
        self.inner = inner
        # Per bucket, left on the gradients' device: read once per optimizer step, not synced per bucket.
        self.local: list[torch.Tensor] = []
        self.averaged: list[torch.Tensor] = []

    def take(self) -> tuple[float, float] | None:
        """This step's (local, averaged) squared norms, and start the next step's."""
        if not self.local:
            return None
        got = (float(torch.stack(self.local).double().sum()), float(torch.stack(self.averaged).double().sum()))
        self.local, self.averaged = [], []
        return got


def _metered_hook(state, bucket):  # noqa: ANN001 - DDP compares annotations with the real classes
    """Measure the bucket's local squared norm, run the real hook, measure the averaged one."""
    buf = bucket.buffer()
    state.local.append(torch.dot(buf, buf))

    def after(fut):  # noqa: ANN001, ANN202
        value = fut.value()
        value = value[0] if isinstance(value, list) else value
        state.averaged.append(torch.dot(value, value))
        return value

    return state.inner(state.inner_state, bucket).then(after)


class DDPStrategy(Strategy):
    """Synchronous data parallel: torch DistributedDataParallel, all-reduce of (compressed) gradients."""

    name = "ddp"
    options = ("compression", "local_sgd", "local_sgd_warmup", "noise_scale")

    def __init__(
        self,
        ctx: Context,
        compression: str = "none",
        local_sgd: int | None = None,
        local_sgd_warmup: int = 0,
        noise_scale: bool = True,
        **unknown: Any,
    ) -> None:
        super().__init__(ctx, **unknown)
        self.compression = comp.parse_compression(compression)
        if local_sgd is not None:
            check_int("local_sgd", local_sgd, 1, why=" (optimizer steps between averages)")
        check_int("local_sgd_warmup", local_sgd_warmup, 0)
        if local_sgd is not None and self.compression.kind != "none":
            raise UserError("compression and local_sgd cannot be combined; choose one")
        if not isinstance(noise_scale, bool):
            raise UserError(f"noise_scale must be True or False, got {noise_scale!r}")
        # The gradient noise scale needs the true average of the replicas' gradients: not PowerSGD's
        # low-rank one, and local SGD averages none.
        self.measure = noise_scale and local_sgd is None and self.compression.kind != "powersgd"
        self.gns = NoiseScale()
        self._meter: _Meter | None = None
        self._previous: list[torch.Tensor] | None = None  # one replica: the sampled pair's first gradient
        self.local_sgd = local_sgd
        self.local_sgd_warmup = local_sgd_warmup
        self._hook_state: Any = None  # PowerSGD's state, checkpointed per rank
        self._local: _LocalSGD | None = None
        self._job: Any = None
        self._bytes = 0

    def wrap_model(self, model: nn.Module) -> nn.Module:
        comp.check_rank_fits(self.compression, model)
        self._bytes = comp.bytes_per_step(self.compression, model)
        if self.world_size == 1 or not dist.is_initialized():
            return model  # one replica: nothing to synchronise
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        kwargs: dict[str, Any] = {}
        if self.compression.kind == "powersgd":
            # One bucket: PowerSGD with DDP's default two buckets aborts or hangs on gloo (TORCH-NOTES).
            size = sum(p.numel() * p.element_size() for p in model.parameters())
            kwargs["bucket_cap_mb"] = size / 2**20 + 1
        ddp = nn.parallel.DistributedDataParallel(model, device_ids=device_ids, **kwargs)
        if self.local_sgd is not None:
            self._local = _LocalSGD(sync=self.local_sgd_warmup > 0)
            ddp.register_comm_hook(self._local, _local_sgd_hook)
            return ddp
        pair = comp.hook(self.compression, ddp)
        if self.measure:
            from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

            inner_state, inner = pair or (None, default_hooks.allreduce_hook)
            self._meter = _Meter(inner_state, inner)
            ddp.register_comm_hook(self._meter, _metered_hook)
        elif pair is not None:
            ddp.register_comm_hook(*pair)
        if self.compression.kind == "powersgd" and pair is not None:
            self._hook_state = pair[0]
        return ddp

    def attach(self, job: Any, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self._job = job
        if self._local is not None:
            self._local.sync = job.step_count < self.local_sgd_warmup

    def unwrap(self, model: nn.Module) -> nn.Module:
        return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model

    @contextlib.contextmanager
    def no_sync(self, model: nn.Module) -> Iterator[None]:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            with model.no_sync():
                yield
        else:
            yield

    def reduce_accumulated(self, model: nn.Module) -> None:
        if self._local is not None and not self._local.sync:
            return  # local SGD: each replica applies its own gradient
        if self.compression.kind in ("fp16", "bf16") and dist.is_initialized() and self.dp_size > 1:
            dtype = torch.float16 if self.compression.kind == "fp16" else torch.bfloat16
            for p in model.parameters():
                if p.grad is not None:
                    g = p.grad.to(dtype).div_(self.dp_size)
                    dist.all_reduce(g)
                    p.grad.copy_(g)
            return
        super().reduce_accumulated(model)  # powersgd: the flush goes uncompressed (README)

    def optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.measure:
            self._observe_noise(optimizer)
        optimizer.step()
        if self._local is None or self._job is None:
            return
        step = self._job.step_count + 1  # the step just taken (the Job counts it after this call)
        self._local.sync = step < self.local_sgd_warmup
        if step > self.local_sgd_warmup and (step - self.local_sgd_warmup) % self.local_sgd == 0:
            self._average(optimizer)

    def _average(self, optimizer: torch.optim.Optimizer) -> None:
        """Average the replicas' parameters (one all-reduce of them all, flattened)."""
        params = [p for g in optimizer.param_groups for p in g["params"]]
        with torch.no_grad():
            flat = torch.cat([p.reshape(-1) for p in params]).div_(self.world_size)
            dist.all_reduce(flat)
            offset = 0
            for p in params:
                p.copy_(flat[offset : offset + p.numel()].view_as(p))
                offset += p.numel()

    def _local_batch(self) -> int | None:
        loader = getattr(self._job, "loader", None)
        # The job's, not the context's: an adaptive batch changes its accumulation steps.
        return loader.batch_size * self._job.grad_accum if loader is not None else None

    def _observe_noise(self, optimizer: torch.optim.Optimizer) -> None:
        """Fold this step's gradient norms into the noise scale estimate (before the step changes them)."""
        b = self._local_batch()
        if b is None:
            return
        if self._meter is not None:
            got = self._meter.take()
            if got is not None:
                self.gns.update(got[0], b, got[1], b * self.world_size)
            return
        if self.world_size > 1:
            return  # several replicas without a meter: none to measure
        # One replica: two successive steps' gradients stand for two replicas. Sampled on one pair of
        # steps in ONE_REPLICA_EVERY, per tensor and in place: a full copy and norm on every step cost
        # half the step time of a small model (benchmarks/ddp_overhead.py).
        phase = (self._job.step_count if self._job is not None else 0) % ONE_REPLICA_EVERY
        if phase > 1:
            return
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if phase == 0:
            self._previous = [g.detach().clone() for g in grads]
            return
        previous, self._previous = self._previous, None
        if not grads or previous is None or len(previous) != len(grads):
            return
        now = sum(float(torch.dot(g.reshape(-1), g.reshape(-1))) for g in grads)
        for q, g in zip(previous, grads):
            q.add_(g).mul_(0.5)  # the two steps' average
        avg = sum(float(torch.dot(q.reshape(-1), q.reshape(-1))) for q in previous)
        self.gns.update(now, b, avg, 2 * b)

    def gradient_stats(self) -> dict[str, float]:
        """The smoothed |G|^2, S and noise scale, once there is an estimate."""
        scale = self.gns.noise_scale
        if scale is None:
            return {}
        return {"grad_sqr": self.gns.grad_sqr, "grad_var": self.gns.grad_var, "noise_scale": scale}

    def comm_bytes_per_step(self) -> float | None:
        """Payload bytes each rank all-reduces per optimizer step (averaged over local SGD's period)."""
        if self.world_size == 1:
            return 0.0
        if self._local is not None and not self._local.sync:
            return self._bytes / float(self.local_sgd or 1)
        return float(self._bytes)

    # -- per-rank state -----------------------------------------------------------------

    def rank_state(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
        """PowerSGD's error feedback and warm-start memory; under local SGD, this replica's model and optimizer."""
        if self._hook_state is not None:
            return {"powersgd": self._hook_state.state()}
        if self._local is not None:
            module = self.unwrap(model)
            return {
                "model": {k: v.detach().cpu().clone() for k, v in module.state_dict().items()},
                "optimizer": optim_state.named_state(optimizer, self.param_names),
            }
        return None

    def load_rank_state(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        if "powersgd" in state and self._hook_state is not None:
            self._hook_state.load(state["powersgd"], self.device)
        if "model" in state and self._local is not None:
            self.unwrap(model).load_state_dict(state["model"])
            optim_state.load_named_state(optimizer, state["optimizer"], self.param_names)
