"""Distributed gradient descent on synthetic linear regression, the classic example.

    corral run --nproc 2 examples/linear_regression.py

Every worker computes the gradient of the squared error on its shard of the
data; DDP averages the gradients, so all workers take the same step. The
script prints the recovered weights next to the true ones.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn
from torch.utils.data import TensorDataset

import corral


def synthetic(n: int, dim: int, noise: float, seed: int = 0) -> tuple[TensorDataset, torch.Tensor, float]:
    """y = X w + b + noise, with fixed true w and b."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(dim, generator=g)
    b = 0.5
    x = torch.randn(n, dim, generator=g)
    y = x @ w + b + noise * torch.randn(n, generator=g)
    return TensorDataset(x, y), w, b


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--dim", type=int, default=8)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=64, help="per worker")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--noise", type=float, default=0.1)
    p.add_argument("--checkpoint-dir", default=None)
    args = p.parse_args()

    job = corral.init(strategy="ddp", checkpoint_dir=args.checkpoint_dir)
    data, w_true, b_true = synthetic(args.n, args.dim, args.noise)
    net = nn.Linear(args.dim, 1)
    opt = torch.optim.SGD(net.parameters(), lr=args.lr)
    net, opt, loader = job.prepare(net, opt, data, batch_size=args.batch_size)
    for _ in job.epochs(args.epochs):
        total, n = 0.0, 0
        for x, y in loader:
            loss = ((net(x).squeeze(-1) - y) ** 2).mean()
            job.step(loss)
            total, n = total + loss.item(), n + 1
        job.log(mse=total / max(n, 1))
    layer = job.strategy.unwrap(net)
    if job.is_main:
        w = layer.weight.detach().flatten()
        print(f"{'':>6} {'true':>8} {'learned':>8}")
        for i in range(args.dim):
            print(f"w[{i}]   {w_true[i].item():8.4f} {w[i].item():8.4f}")
        print(f"bias   {b_true:8.4f} {layer.bias.item():8.4f}")
        print(f"max |w - w_true| = {(w - w_true).abs().max().item():.4f}")
    job.finish()


if __name__ == "__main__":
    main()
