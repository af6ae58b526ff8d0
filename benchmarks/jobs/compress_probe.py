"""The digits MLP (64-1024-1024-10) under `ddp` with a compression or local SGD, for benchmarks/compression.py.

    corral run --nproc N compress_probe.py OUT.json [--compression powersgd:4 | --local-sgd 8]
        [--epochs 15] [--max-steps S]

Rank 0 writes OUT.json: mean (and median) step time after 5 warm-up steps, test accuracy,
and the payload bytes per step the strategy counts.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import corral

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
from digits import data  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--compression", default="none")
    p.add_argument("--local-sgd", type=int, default=None)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.05)
    args = p.parse_args()
    options = {"local_sgd": args.local_sgd} if args.local_sgd else {"compression": args.compression}
    job = corral.init(strategy="ddp", **options)
    train, test = data()
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10))
    opt = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=0.9)
    net, opt, loader = job.prepare(net, opt, train, batch_size=args.batch_size)
    times: list[float] = []
    last = time.perf_counter()
    done = False
    for _ in job.epochs(args.epochs):
        for x, y in loader:
            job.step(loss_fn=F.cross_entropy, inputs=x, target=y)
            now = time.perf_counter()
            times.append(now - last)
            last = now
            if args.max_steps is not None and job.step_count >= args.max_steps:
                done = True
                break
        if done:
            break
    x, y = test.tensors
    acc = job.log(acc=(job.predict(x).argmax(1) == y).float().mean().item())["acc"]
    if job.is_main:
        Path(args.out).write_text(
            json.dumps(
                {
                    # The mean, not the median: under local SGD one step in K carries the whole all-reduce.
                    "step_s": statistics.fmean(times[5:] or times),
                    "median_step_s": statistics.median(times[5:] or times),
                    "accuracy": acc,
                    "bytes_per_step": job.strategy.comm_bytes_per_step(),
                    "steps": job.step_count,
                }
            )
        )
    job.finish()


if __name__ == "__main__":
    main()
