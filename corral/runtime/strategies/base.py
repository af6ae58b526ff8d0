"""The interface every distribution strategy implements; the Job API calls nothing else.

A strategy wraps the user's model and optimizer and says how gradients are
synchronised, so the parameter-server and pipeline strategies plug in beside
`ddp` without changing the job loop.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, ClassVar

import torch
from torch import nn


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
