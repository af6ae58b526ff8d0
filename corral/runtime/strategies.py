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

    def __init__(self, *, world_size: int, device: torch.device) -> None:
        self.world_size = world_size
        self.device = device

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


STRATEGIES: dict[str, Callable[..., Strategy]] = {"ddp": DDPStrategy}


def get_strategy(name: str, **kwargs: Any) -> Strategy:
    """The strategy registered as `name`; a UserError lists the known ones otherwise."""
    try:
        factory = STRATEGIES[name]
    except KeyError:
        raise UserError(f"unknown strategy {name!r}; choose one of: {', '.join(sorted(STRATEGIES))}") from None
    return factory(**kwargs)
