"""Gradient compression for `ddp`: DDP communication hooks, their checkpointable state, bytes sent per step.

    corral.init(strategy="ddp", compression="none" | "fp16" | "bf16" | "powersgd:<rank>")

`fp16` is torch's fp16_compress_hook; `bf16` is our own hook of the same
shape (torch's checks for NCCL by name and refuses gloo); `powersgd:r` is
torch's PowerSGD with error feedback and warm start, compressing from the
second step, with DDP forced to one gradient bucket (two buckets abort or
hang on gloo: see TORCH-NOTES). Bytes are counted as the payload each rank
hands to all-reduce per synchronised step, computed from the parameter shapes
the way each hook packs them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from corral.errors import UserError

KINDS = ("none", "fp16", "bf16", "powersgd")
POWERSGD_START = 2  # PowerSGD needs one plain all-reduce first (torch requires start_powerSGD_iter > 1)


@dataclass(frozen=True)
class Compression:
    """A parsed `compression=` option."""

    kind: str
    rank: int = 0


def parse_compression(spec: str) -> Compression:
    """`none`, `fp16`, `bf16` or `powersgd:<rank>` (rank >= 1); a UserError names what is wrong."""
    if not isinstance(spec, str):
        raise UserError(f"compression must be a string such as 'fp16' or 'powersgd:2', got {spec!r}")
    kind, _, arg = spec.partition(":")
    if kind not in KINDS:
        raise UserError(f"unknown compression {spec!r}; choose one of: none, fp16, bf16, powersgd:<rank>")
    if kind != "powersgd":
        if arg:
            raise UserError(f"compression {kind!r} takes no argument, got {spec!r}")
        return Compression(kind)
    try:
        rank = int(arg)
    except ValueError:
        raise UserError(f"compression 'powersgd' needs an integer rank >= 1, e.g. 'powersgd:2', got {spec!r}") from None
    if rank < 1:
        raise UserError(f"PowerSGD rank must be >= 1, got {rank}")
    return Compression("powersgd", rank)


def check_rank_fits(c: Compression, model: nn.Module) -> None:
    """A PowerSGD rank above every matrix gradient's smaller side compresses nothing: refuse it by name."""
    if c.kind != "powersgd":
        return
    sides = [min(p.shape[0], p.numel() // p.shape[0]) for p in model.parameters() if p.requires_grad and p.dim() > 1]
    if not sides:
        raise UserError("PowerSGD compresses matrix gradients; this model has none (use fp16 or bf16)")
    if c.rank > max(sides):
        raise UserError(
            f"PowerSGD rank {c.rank} is above the largest gradient matrix's smaller dimension ({max(sides)})"
        )


def bytes_per_step(c: Compression, model: nn.Module) -> int:
    """Payload bytes one rank hands to all-reduce per synchronised step under compression `c`."""
    params = [p for p in model.parameters() if p.requires_grad]
    full = sum(p.numel() * p.element_size() for p in params)
    if c.kind == "none":
        return full
    if c.kind in ("fp16", "bf16"):
        return sum(p.numel() * 2 for p in params)
    total = 0
    for p in params:
        # As powerSGD_hook packs them: 1-d tensors (and matrices not worth compressing) go as they are,
        # an n x m matrix as P (n x r) and Q (m x r) when that is at least min_compression_rate (2) smaller.
        if p.dim() <= 1:
            total += p.numel() * p.element_size()
            continue
        n, m = p.shape[0], p.numel() // p.shape[0]
        r = min(n, m, c.rank)
        compressed = (n + m) * r
        total += (compressed if compressed * 2 < n * m else n * m) * p.element_size()
    return total


def _bf16_hook(process_group, bucket):  # noqa: ANN001 - DDP compares annotations with the real classes
    """All-reduce the bucket in bfloat16 and decompress into it (any backend, CPU included).

    No annotations: DDP compares them with the real classes, and this module's are strings.
    """
    group = process_group if process_group is not None else dist.group.WORLD
    world = dist.get_world_size(group)
    buffer = bucket.buffer()
    compressed = buffer.to(torch.bfloat16).div_(world)
    fut = dist.all_reduce(compressed, group=group, async_op=True).get_future()

    def decompress(f: torch.futures.Future[Any]) -> torch.Tensor:
        buffer.copy_(f.value()[0])
        return buffer

    return fut.then(decompress)


class PowerSGD:
    """torch's PowerSGD state plus each bucket's parameter order, so saved buffers follow DDP's re-bucketing.

    PowerSGD keeps its error feedback and warm-start matrices in the layout of a bucket's
    flat buffer. DDP builds its buckets in one parameter order and, after the first
    backward of every process, rebuilds them in the order the gradients became ready. A
    fresh run goes through that before PowerSGD starts; a resumed run meets it in the middle,
    so the hook moves the buffers to the new order whenever a bucket's order changes.
    """

    def __init__(self, psgd: Any, names: dict[int, str], shapes: dict[str, tuple[int, ...]]) -> None:
        self.psgd = psgd
        self.names = names
        self.shapes = shapes
        self.layouts: dict[int, list[str]] = {}

    def relayout(self, index: int, order: list[str]) -> None:
        """Move bucket `index`'s buffers from the order they were made in to `order`."""
        old = self.layouts.get(index)
        self.layouts[index] = order
        if old is None or old == order:
            return
        st = self.psgd
        if index in st.error_dict:
            st.error_dict[index] = _permute(st.error_dict[index], self._flat_slices(old), order)
        if index in st.p_memory_dict:
            ps, qs = self._pq_slices(old)
            st.p_memory_dict[index] = _permute(st.p_memory_dict[index], ps, self._compressed(order))
            st.q_memory_dict[index] = _permute(st.q_memory_dict[index], qs, self._compressed(order))

    def _flat_slices(self, order: list[str]) -> dict[str, tuple[int, int]]:
        out, at = {}, 0
        for name in order:
            n = math.prod(self.shapes[name])
            out[name] = (at, n)
            at += n
        return out

    def _rank_of(self, name: str) -> tuple[int, int, int, bool]:
        shape = self.shapes[name]
        n, m = shape[0], math.prod(shape) // shape[0]
        r = min(n, m, self.psgd.matrix_approximation_rank)
        return n, m, r, (n + m) * r * self.psgd.min_compression_rate < n * m

    def _compressed(self, order: list[str]) -> list[str]:
        """The compressed tensors in the order the hook lays out P and Q: grouped by shape, first seen first."""
        groups: dict[tuple[int, ...], list[str]] = {}
        for name in order:
            n, m, _, compressed = self._rank_of(name)
            if compressed:
                groups.setdefault((n, m), []).append(name)
        return [name for names in groups.values() for name in names]

    def _pq_slices(self, order: list[str]) -> tuple[dict[str, tuple[int, int]], dict[str, tuple[int, int]]]:
        ps, qs, p_at, q_at = {}, {}, 0, 0
        for name in self._compressed(order):
            n, m, r, _ = self._rank_of(name)
            ps[name], qs[name] = (p_at, n * r), (q_at, m * r)
            p_at += n * r
            q_at += m * r
        return ps, qs

    def state(self) -> dict[str, Any]:
        """What to checkpoint: PowerSGD's slots (error feedback, warm start, iteration, RNG) and the layouts."""
        out: dict[str, Any] = {"layouts": {k: list(v) for k, v in self.layouts.items()}}
        for slot in self.psgd.__slots__:
            if slot == "process_group":
                continue
            value = getattr(self.psgd, slot)
            if isinstance(value, dict):
                value = {k: v.detach().cpu().clone() if isinstance(v, torch.Tensor) else v for k, v in value.items()}
            out[slot] = value
        return out

    def load(self, saved: dict[str, Any], device: torch.device) -> None:
        """Restore what `state` saved."""
        for slot, value in saved.items():
            if slot == "layouts":
                self.layouts = {int(k): list(v) for k, v in value.items()}
                continue
            if isinstance(value, dict):
                value = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in value.items()}
            setattr(self.psgd, slot, value)


def _permute(flat: torch.Tensor, slices: dict[str, tuple[int, int]], order: list[str]) -> torch.Tensor:
    return torch.cat([flat[a : a + n] for a, n in (slices[name] for name in order)]) if order else flat


def _powersgd_hook(state, bucket):  # noqa: ANN001 - DDP compares annotations with the real classes
    """torch's PowerSGD hook, after moving the bucket's saved buffers to its current parameter order."""
    from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook

    state.relayout(bucket.index(), [state.names[id(p)] for p in bucket.parameters()])
    return powerSGD_hook.powerSGD_hook(state.psgd, bucket)


def hook(c: Compression, ddp: nn.parallel.DistributedDataParallel) -> tuple[Any, Callable[..., Any]] | None:
    """The (state, hook) pair that implements compression `c` on `ddp`; None for `none` (DDP's own all-reduce)."""
    if c.kind == "none":
        return None
    if c.kind == "fp16":
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

        return None, default_hooks.fp16_compress_hook
    if c.kind == "bf16":
        return None, _bf16_hook
    from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook

    psgd = powerSGD_hook.PowerSGDState(
        process_group=None,
        matrix_approximation_rank=c.rank,
        start_powerSGD_iter=POWERSGD_START,
        use_error_feedback=True,
        warm_start=True,
    )
    named = list(ddp.module.named_parameters())
    return PowerSGD(psgd, {id(p): n for n, p in named}, {n: tuple(p.shape) for n, p in named}), _powersgd_hook
