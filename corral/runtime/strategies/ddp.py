"""`ddp`: synchronous data parallel with torch DistributedDataParallel."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch.distributed as dist
from torch import nn

from corral.runtime.strategies.base import Strategy


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
