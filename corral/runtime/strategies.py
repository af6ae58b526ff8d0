"""Distribution strategies behind one interface, chosen by name.

A strategy wraps the user's model and optimizer and says how gradients are
synchronised. The Job API calls only this interface, so the parameter-server
and pipeline strategies plug in beside `ddp` without changing the job loop.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import torch
import torch.distributed as dist
from torch import nn

from corral.errors import UserError


class Strategy:
    """How a job's model is replicated and its gradients synchronised."""

    name: ClassVar[str] = ""
    # Every worker takes the same optimizer steps, so the Job may run a collective
    # (checkpoint, preemption vote) right after a step. False for asynchronous PS.
    lockstep: bool = True
    # Micro-steps outside no_sync() average gradients in backward; when an epoch ends
    # mid-accumulation the Job all-reduces what no_sync() left local.
    syncs_in_backward: bool = True
    # The loader class the Job builds in prepare() (None: its own ShardedLoader).
    loader_class: type | None = None

    def __init__(self, *, world_size: int, device: torch.device) -> None:
        self.world_size = world_size
        self.device = device

    def attach(self, job: Any, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Called by job.prepare once the model is wrapped and restored: connect whatever the strategy needs."""

    def optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Apply this step's (synchronised) gradients."""
        optimizer.step()

    def optimizer_state_dict(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The optimizer state to checkpoint, in torch's own format."""
        return optimizer.state_dict()

    def close(self) -> None:
        """The job is leaving: release what `attach` connected."""

    def wrap_model(self, model: nn.Module) -> nn.Module:
        """The model the user trains (possibly wrapped for communication)."""
        return model

    def unwrap(self, model: nn.Module) -> nn.Module:
        """The user's own module inside whatever `wrap_model` returned."""
        return model

    @contextlib.contextmanager
    def no_sync(self, model: nn.Module) -> Iterator[None]:
        """Within this context, backward accumulates locally without communicating."""
        yield

    def state_dict(self, model: nn.Module) -> dict[str, Any]:
        """The model state to checkpoint (full, independent of the world size)."""
        return self.unwrap(model).state_dict()

    def load_state_dict(self, model: nn.Module, state: dict[str, Any]) -> None:
        """Restore a state produced by `state_dict`, at any world size."""
        self.unwrap(model).load_state_dict(state)


class DDPStrategy(Strategy):
    """Synchronous data parallel: torch DistributedDataParallel, all-reduce of gradients."""

    name = "ddp"

    def wrap_model(self, model: nn.Module) -> nn.Module:
        if self.world_size == 1 or not dist.is_initialized():
            return model  # one replica: nothing to synchronise
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    def unwrap(self, model: nn.Module) -> nn.Module:
        return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model

    @contextlib.contextmanager
    def no_sync(self, model: nn.Module) -> Iterator[None]:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            with model.no_sync():
                yield
        else:
            yield


def _ps(**kwargs: Any) -> Strategy:
    # Imported on use: the parameter-server package imports the Job module (for its loader).
    from corral.runtime.ps.strategy import PSStrategy

    return PSStrategy(**kwargs)


STRATEGIES: dict[str, Callable[..., Strategy]] = {"ddp": DDPStrategy, "ps": _ps}


def get_strategy(name: str, **kwargs: Any) -> Strategy:
    """The strategy registered as `name`; a UserError lists the known ones otherwise."""
    try:
        factory = STRATEGIES[name]
    except KeyError:
        raise UserError(f"unknown strategy {name!r}; choose one of: {', '.join(sorted(STRATEGIES))}") from None
    return factory(**kwargs)
