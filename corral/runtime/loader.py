"""The Job's data loader: this rank's batches of the epoch, resumable mid-epoch at any world size.

`Job.prepare` builds one (or the strategy's subclass, e.g. the parameter
server's `PSLoader`); the loader asks its job for the epoch, data-parallel rank
and size (ranks of one pipeline replica load the same batches) and partition
history, and tells it where each micro-step begins and ends, all through the
Job's public hooks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from corral.runtime.partition import EpochPlan, Segment

if TYPE_CHECKING:  # pragma: no cover
    from corral.runtime.job import Job


class ShardedLoader:
    """Iterates this rank's batches of the current epoch; resumable mid-epoch at any world size."""

    def __init__(
        self,
        job: Job,
        dataset: Any,
        batch_size: int,
        *,
        partition: str,
        shuffle: bool,
        drop_last: bool,
        costs: Sequence[float] | None,
        key: Callable[[int], Any] | None,
        collate_fn: Callable[[list[Any]], Any] | None,
        num_workers: int,
    ) -> None:
        self.job = job
        self.dataset = dataset
        self.batch_size = batch_size
        self.partition = partition
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.costs = None if costs is None else np.asarray(costs, dtype=np.float64)
        self.key = key
        self.collate_fn = collate_fn
        self.num_workers = num_workers
        self.batches_done = 0  # batches of the current segment whose gradients are in the model
        self.yielded = 0  # batches of the current segment handed to the user
        self._plan: EpochPlan | None = None
        # TensorDatasets are indexed with one gather per batch instead of one
        # __getitem__ per sample: same samples, much less Python per step.
        tensor_dataset = isinstance(dataset, torch.utils.data.TensorDataset)
        self._tensors = getattr(dataset, "tensors", None) if tensor_dataset else None

    def plan(self) -> EpochPlan:
        """This rank's plan for the job's current epoch (after what earlier segments consumed)."""
        job = self.job
        if self._plan is None or self._plan.epoch != job.epoch or self._plan.history != job.history:
            self._plan = EpochPlan(
                n=len(self.dataset),
                epoch=job.epoch,
                rank=job.dp_rank,
                world_size=job.dp_size,
                batch_size=self.batch_size,
                kind=self.partition,
                seed=job.seed,
                shuffle=self.shuffle,
                drop_last=self.drop_last,
                history=job.history,
                costs=self.costs,
                key=self.key,
            )
            self.batches_done = self.yielded = 0
        return self._plan

    def __len__(self) -> int:
        return self.plan().num_batches

    def _fetch(self, idx: np.ndarray) -> Any:
        if self._tensors is not None:
            index = torch.from_numpy(idx)
            return [t[index] for t in self._tensors]
        items = [self.dataset[int(i)] for i in idx]
        collate = self.collate_fn or torch.utils.data.default_collate
        return collate(items)

    def __iter__(self) -> Iterator[Any]:
        plan = self.plan()
        job = self.job
        start = self.batches_done
        job.use_loader(self)
        for b in range(start, plan.num_batches):
            if job.progress_reached():
                break  # an adaptive batch made the progress asked for mid-pass (Job.epochs)
            batch = to_device(self._fetch(plan.batch(b)), job.device)
            job.begin_micro_step(last_of_epoch=b == plan.num_batches - 1)
            self.yielded = b + 1
            yield batch
        job.end_micro_step()

    def segment(self) -> Segment:
        """The part of the epoch consumed so far (whose gradients are in the model)."""
        return self.plan().consumed_after(self.batches_done)

    def fraction_done(self, epoch: int) -> float:
        """How much of epoch `epoch` is inside the model, counting what earlier segments consumed."""
        plan = self._plan
        if plan is None or plan.epoch != epoch or not plan.num_batches or not plan.n:
            return 0.0
        # The plan covers what earlier segments of this epoch left (after a resume): count both.
        left = len(plan.pool)
        return (plan.n - left + left * min(1.0, self.batches_done / plan.num_batches)) / plan.n


def first_batch(
    dataset: Any, batch_size: int, collate_fn: Callable[[list[Any]], Any] | None, device: torch.device
) -> Any:
    """The dataset's first `batch_size` samples as one batch on `device` (a strategy profiles its model on it)."""
    items = [dataset[i] for i in range(min(batch_size, len(dataset)))]
    return to_device((collate_fn or torch.utils.data.default_collate)(items), device)


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True) if batch.device != device else batch
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch
