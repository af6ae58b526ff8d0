"""Train an MLP on scikit-learn's digits with the corral Job API.

    corral run --nproc 2 examples/digits.py --epochs 10
    corral run --nproc 2 examples/digits.py --epochs 10 --adaptive --batch-size 32 --max-batch 512

Each worker reads its own shard of the training set; gradients are averaged
with torch DDP. The script checkpoints into --checkpoint-dir (or the
directory the corral service gives it) and resumes from there.

With --adaptive the job picks its global batch by goodput between
--batch-size (then the initial *global* batch) and --max-batch, and scales the
learning rate by --lr-scaling (corral.runtime.adaptive); --epochs then counts
epochs' worth of progress at the initial batch.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import TensorDataset

import corral


def data(seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """Digits (8x8 images, 10 classes) scaled to [0, 1], split 80/20."""
    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x / 16.0, y, test_size=0.2, random_state=seed, stratify=y)
    as_ds = lambda a, b: TensorDataset(torch.tensor(a, dtype=torch.float32), torch.tensor(b))  # noqa: E731
    return as_ds(x_tr, y_tr), as_ds(x_te, y_te)


def model() -> nn.Module:
    """64-256-256-10 MLP."""
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))


def accuracy(net: nn.Module, ds: TensorDataset) -> float:
    """Fraction of `ds` classified correctly."""
    x, y = ds.tensors
    with torch.no_grad():
        return (net(x).argmax(1) == y).float().mean().item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32, help="per worker (with --adaptive: the initial global batch)")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--precision", default="fp32")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--checkpoint-dir", default=None)
    p.add_argument("--checkpoint-every", type=int, default=None)
    p.add_argument(
        "--step-sleep",
        type=float,
        default=0.0,
        help="seconds of emulated accelerator time per step (CPU-only hosts whose device slots share "
        "cores: benchmarks/sim_live.py)",
    )
    p.add_argument(
        "--sample-sleep",
        type=float,
        default=0.0,
        help="more emulated accelerator seconds per sample of the worker's batch, on top of --step-sleep "
        "(a device's step time grows with its batch: benchmarks/adaptive.py)",
    )
    p.add_argument("--adaptive", action="store_true", help="let the job choose its batch by goodput")
    p.add_argument("--max-batch", type=int, default=512, help="with --adaptive: the largest global batch")
    p.add_argument(
        "--lr-scaling", default="adascale", help="with --adaptive: adascale, linear or sqrt (LR vs the batch)"
    )
    args = p.parse_args()

    adaptive: dict[str, Any] = {}
    if args.adaptive:
        adaptive = dict(
            batch_size="adaptive", initial_batch=args.batch_size, max_batch=args.max_batch, lr_scaling=args.lr_scaling
        )
    job = corral.init(
        strategy="ddp",
        precision=args.precision,
        grad_accum=args.grad_accum,
        checkpoint_dir=args.checkpoint_dir,
        checkpoint_every=args.checkpoint_every,
        **adaptive,
    )
    train, test = data()
    net = model()
    opt = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=0.9)
    if args.adaptive:
        net, opt, loader = job.prepare(net, opt, train)  # the job chooses the batch
    else:
        net, opt, loader = job.prepare(net, opt, train, batch_size=args.batch_size)
    if job.restored_from is not None and job.is_main:
        print(f"resumed from step {job.restored_from} (epoch {job.epoch})")
    for epoch in job.epochs(args.epochs):
        total, n = 0.0, 0
        for x, y in loader:
            loss = F.cross_entropy(net(x), y)
            if args.step_sleep or args.sample_sleep:
                # The device's forward and backward: inside the step, so its reported time holds it.
                time.sleep(args.step_sleep + args.sample_sleep * len(x))
            job.step(loss)
            total, n = total + loss.item(), n + 1
        job.log(loss=total / max(n, 1), test_acc=accuracy(net, test))
    acc = accuracy(net, test)
    if job.is_main:
        print(f"final test accuracy: {acc:.4f} after {job.step_count} steps on {job.world_size} worker(s)")
    job.finish()


if __name__ == "__main__":
    main()
