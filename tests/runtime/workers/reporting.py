"""A short Job API run that logs a loss every epoch, for the metrics-reporting tests.

Rank 0 prints `loop_s=... finish_s=...`: how long the training loop and job.finish() took.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn
from torch.utils.data import TensorDataset

import corral


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--n", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--sleep", type=float, default=0.0, help="seconds per step (to make the run last)")
    p.add_argument("--checkpoint-dir", default=None)
    args = p.parse_args()

    job = corral.init(checkpoint_dir=args.checkpoint_dir)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.n, 4, generator=g)
    data = TensorDataset(x, x @ torch.tensor([1.0, -2.0, 3.0, 0.5]))
    torch.manual_seed(0)
    net = nn.Linear(4, 1)
    model, opt, loader = job.prepare(net, torch.optim.SGD(net.parameters(), lr=0.05), data, batch_size=args.batch_size)
    t0 = time.perf_counter()
    for _ in job.epochs(args.epochs):
        total, n = 0.0, 0
        for xb, yb in loader:
            loss = ((model(xb).squeeze(-1) - yb) ** 2).mean()
            job.step(loss)
            total, n = total + loss.item(), n + 1
            if args.sleep:
                time.sleep(args.sleep)
        job.log(loss=total / n)
    loop_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    job.finish()
    if job.is_main:
        print(f"loop_s={loop_s:.3f} finish_s={time.perf_counter() - t1:.3f}", flush=True)


if __name__ == "__main__":
    main()
