"""A digits MLP under `ddp` with a fixed or an adaptive batch, for the adaptive-batch tests.

--stop-at E leaves with job.exit_preempted() (checkpoint, exit 75) as epoch E starts, so that a
test can resume it at another world size; at the end rank 0 writes the test accuracy, the
epochs it ran and the adaptive decisions into --out/result.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import TensorDataset

import corral


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=int, default=24)
    p.add_argument("--batch", type=int, default=32, help="the fixed batch, or initial_batch when adaptive")
    p.add_argument("--adaptive", action="store_true")
    p.add_argument("--max-batch", type=int, default=256)
    p.add_argument("--lr-scaling", default="adascale")
    p.add_argument("--stop-at", type=int, default=None)
    p.add_argument("--lr", type=float, default=0.1)
    args = p.parse_args()
    out = Path(args.out)
    if args.adaptive:
        job = corral.init(
            strategy="ddp",
            checkpoint_dir=out,
            batch_size="adaptive",
            initial_batch=args.batch,
            max_batch=args.max_batch,
            lr_scaling=args.lr_scaling,
        )
    else:
        job = corral.init(strategy="ddp", checkpoint_dir=out)
    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target)
    order = np.random.default_rng(0).permutation(len(x))
    train, test = order[:1437], order[1437:]
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.SGD(net.parameters(), lr=args.lr)
    data = TensorDataset(x[train], y[train])
    if args.adaptive:
        net, opt, loader = job.prepare(net, opt, data)
    else:
        net, opt, loader = job.prepare(net, opt, data, batch_size=args.batch // job.dp_size)
    passes = 0
    for epoch in job.epochs(args.epochs):
        if args.stop_at is not None and epoch >= args.stop_at:
            job.exit_preempted()
        for xb, yb in loader:
            job.step(loss_fn=nn.functional.cross_entropy, inputs=xb, target=yb)
        passes += 1
    accuracy = float((job.predict(x[test]).argmax(1) == y[test]).float().mean())
    if job.is_main:
        (out / "result.json").write_text(
            json.dumps(
                {
                    "accuracy": accuracy,
                    "epoch": job.epoch,
                    "steps": job.step_count,
                    "adaptive": job.adaptive.state_dict() if job.adaptive is not None else None,
                }
            )
        )
    job.finish()


if __name__ == "__main__":
    main()
