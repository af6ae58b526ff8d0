"""A small MLP regression under `ddp` with gradient compression or local SGD, for the compression tests.

Stops after --steps optimizer steps with job.finish() (a checkpoint when a directory is given)
and writes, per rank, its final parameters, losses and the comm bytes the strategy counts.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

import corral


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--compression", default="none")
    p.add_argument("--local-sgd", type=int, default=None)
    p.add_argument("--warmup", type=int, default=0)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--checkpoint", action="store_true", help="checkpoint into --out")
    args = p.parse_args()
    options: dict = {"compression": args.compression}
    if args.local_sgd is not None:
        options = {"local_sgd": args.local_sgd, "local_sgd_warmup": args.warmup}
    job = corral.init(
        strategy="ddp", grad_accum=args.grad_accum, checkpoint_dir=args.out if args.checkpoint else None, **options
    )
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1024, 32, generator=g)
    y = torch.tanh(x[:, :4] * 2) + 0.05 * torch.randn(1024, 4, generator=g)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(32, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 4))
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=args.momentum)
    net, opt, loader = job.prepare(net, opt, TensorDataset(x, y), batch_size=args.batch_size)
    losses = []
    done = False
    for _ in job.epochs(100):
        for xb, yb in loader:
            losses.append(float(job.step(loss_fn=nn.functional.mse_loss, inputs=xb, target=yb)))
            if job.step_count >= args.steps and job.micro_step == 0:
                done = True
                break
        if done:
            break
    module = job.strategy.unwrap(net)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank-{job.rank}.json").write_text(
        json.dumps(
            {
                "params": [q.detach().flatten().tolist() for q in module.parameters()],
                "losses": losses,
                "bytes": job.strategy.comm_bytes_per_step(),
                "gns": job.strategy.gradient_stats(),
                "steps": job.step_count,
            }
        )
    )
    job.finish()


if __name__ == "__main__":
    main()
