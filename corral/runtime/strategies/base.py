"""The interface every distribution strategy implements; the Job calls nothing else.

A strategy gets a typed `Context` (who and where this rank is, the job's
settings, and the job itself for its public hooks) and overrides the hooks for
what differs between strategies: how the model is wrapped or split, who runs
forward and backward, how gradients are synchronised and clipped, what each
rank saves and loads, and the teardown. A new strategy is one module and one
registry entry in `corral.runtime.strategies`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.distributed as dist
from torch import nn

from corral.errors import UserError
from corral.runtime.strategies import optim_state

if TYPE_CHECKING:  # pragma: no cover
    from corral.runtime.job import Job


def check_int(name: str, value: Any, minimum: int, *, shown: str | None = None, why: str = "") -> None:
    """A UserError unless `value` is an integer (not a bool) >= `minimum` (written as `shown` in the message)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f"{name} must be an integer >= {shown or minimum}{why}, got {value!r}")


@dataclass(frozen=True)
class Context:
    """What a strategy knows of its rank and job when it is built (before any process group)."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    precision: str
    grad_accum: int
    seed: int


@dataclass(frozen=True)
class MicroStep:
    """One micro-step's work: a loss computed by the user, or the loss function, inputs and target."""

    loss: torch.Tensor | None = None
    loss_fn: Callable[..., torch.Tensor] | None = None
    inputs: Any = None
    target: Any = None


class Strategy:
    """How a job's model is replicated or split, and its gradients synchronised."""

    name: ClassVar[str] = ""
    # The options `corral.init(strategy=name, ...)` accepts for this strategy.
    options: ClassVar[tuple[str, ...]] = ()
    # Every worker takes the same optimizer steps, so the Job may run a collective
    # (checkpoint, preemption vote) right after a step. False for asynchronous PS.
    lockstep: bool = True
    # Micro-steps outside no_sync() average gradients in backward; when an epoch ends
    # mid-accumulation, reduce_accumulated() all-reduces what no_sync() left local.
    syncs_in_backward: bool = True
    # The loader class the Job builds in prepare() (None: its own ShardedLoader).
    loader_class: type | None = None
    # Precisions the strategy supports.
    precisions: ClassVar[tuple[str, ...]] = ("fp32", "bf16", "fp16")

    def __init__(self, ctx: Context, **unknown: Any) -> None:
        if unknown:
            takes = f"it takes {', '.join(self.options)}" if self.options else "it takes no options"
            raise UserError(f"unknown option(s) for strategy {self.name!r}: {', '.join(sorted(unknown))} ({takes})")
        if ctx.precision not in self.precisions:
            raise UserError(
                f"strategy {self.name!r} does not support precision {ctx.precision!r}; "
                f"use one of: {', '.join(self.precisions)}"
            )
        self.ctx = ctx
        self.world_size = ctx.world_size
        self.device = ctx.device
        # id(parameter) -> its name in the user's model: the key of checkpointed optimizer state.
        self.param_names: dict[int, str] = {}

    # -- topology ------------------------------------------------------------------------

    @property
    def dp_rank(self) -> int:
        """This rank's index among the data-parallel replicas (which share of each batch it trains)."""
        return self.ctx.rank

    @property
    def dp_size(self) -> int:
        """How many data-parallel replicas split each global batch."""
        return self.ctx.world_size

    # -- set-up ----------------------------------------------------------------------------

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer, sample: Callable[[], Any]) -> nn.Module:
        """The model the user trains (wrapped, or this rank's stage); `sample` gives a first batch to profile."""
        self.param_names = {id(p): n for n, p in model.named_parameters()}
        return self.wrap_model(model)

    def wrap_model(self, model: nn.Module) -> nn.Module:
        """The model wrapped for communication (identity by default)."""
        return model

    def attach(self, job: Job, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Called once the model is prepared and restored: connect whatever the strategy needs."""

    def unwrap(self, model: nn.Module) -> nn.Module:
        """The user's own module inside whatever `prepare` returned."""
        return model

    # -- the step ----------------------------------------------------------------------------

    def forward_backward(
        self, model: nn.Module, work: MicroStep, backward: Callable[[torch.Tensor], None]
    ) -> torch.Tensor:
        """Run one micro-step's forward (unless the user did) and backward; return its loss, detached."""
        loss = work.loss
        if loss is None:
            assert work.loss_fn is not None
            loss = work.loss_fn(model(work.inputs), work.target)
        backward(loss)
        return loss.detach()

    @contextlib.contextmanager
    def no_sync(self, model: nn.Module) -> Iterator[None]:
        """Within this context, backward accumulates locally without communicating."""
        yield

    def reduce_accumulated(self, model: nn.Module) -> None:
        """Average gradients that micro-steps under no_sync() left local (an epoch ended mid-window)."""
        if not (self.syncs_in_backward and dist.is_initialized() and self.dp_size > 1):
            return
        for p in model.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= self.dp_size

    def clip_grad_norm(self, model: nn.Module, max_norm: float) -> None:
        """Scale gradients so that the global gradient norm is at most `max_norm`."""
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)

    def optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Apply this step's (synchronised) gradients."""
        optimizer.step()

    def predict(self, model: nn.Module, inputs: Any) -> Any:
        """The model's output for `inputs` without gradients, on every rank."""
        with torch.no_grad():
            return model(inputs)

    # -- checkpoints ------------------------------------------------------------------------------

    def gather_state(
        self, model: nn.Module, optimizer: torch.optim.Optimizer
    ) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """Every rank calls it: rank 0 gets (full model state, optimizer state by parameter name), others None."""
        if self.ctx.rank != 0:
            return None
        return self.unwrap(model).state_dict(), optim_state.named_state(optimizer, self.param_names)

    def load_state(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any], optim: dict[str, Any]
    ) -> None:
        """Restore what `gather_state` produced, at any world size (or stage count) and under any strategy."""
        self.unwrap(model).load_state_dict(state)
        optim_state.load_named_state(optimizer, optim, self.param_names)

    def rank_state(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
        """State that differs between ranks and must survive a resume (compression buffers), or None."""
        return None

    def load_rank_state(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        """Restore what `rank_state` returned on this rank (called only when the world size is unchanged)."""

    def gradient_stats(self) -> dict[str, float]:
        """Gradient statistics for the scheduler (the noise scale's |G|^2 and S), when the strategy has them."""
        return {}

    def comm_bytes_per_step(self) -> float | None:
        """Payload bytes each rank sends per optimizer step for gradients, when the strategy counts them."""
        return None

    def close(self) -> None:
        """The job is leaving: release what `attach` connected."""
