"""A deterministic 8-layer MLP regression trained through the Job API under `pipeline` or `ddp`.

The same script under every strategy: `job.step(loss_fn=..., inputs=x, target=y)`.
The final checkpoint (job.finish) holds the whole model, which the tests compare.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

import corral


def model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 48), nn.Tanh(),
        nn.Linear(48, 32), nn.Tanh(), nn.Linear(32, 16), nn.Linear(16, 4),
    )  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--strategy", default="pipeline")
    p.add_argument("--stages", type=int, default=2)
    p.add_argument("--microbatches", type=int, default=None)
    p.add_argument("--schedule", default="1f1b")
    p.add_argument("--balance", default="auto")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--max-grad-norm", type=float, default=None)
    p.add_argument("--precision", default="fp32")
    p.add_argument("--sleep", type=float, default=0.0, help="seconds per step (so that the stop vote runs often)")
    p.add_argument("--sigterm-at", type=int, default=None, help="rank 0 SIGTERMs itself after this step")
    args = p.parse_args()
    options: dict = {}
    if args.strategy == "pipeline":
        balance = args.balance if args.balance == "auto" else [int(n) for n in args.balance.split(",")]
        options = {"stages": args.stages, "schedule": args.schedule, "balance": balance}
        if args.microbatches is not None:
            options["microbatches"] = args.microbatches
    job = corral.init(
        strategy=args.strategy,
        checkpoint_dir=args.out,
        grad_accum=args.grad_accum,
        max_grad_norm=args.max_grad_norm,
        precision=args.precision,
        **options,
    )
    g = torch.Generator().manual_seed(7)
    x = torch.randn(512, 16, generator=g)
    y = torch.sin(x[:, :4]) + 0.1 * torch.randn(512, 4, generator=g)
    net = model()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    net, opt, loader = job.prepare(net, opt, TensorDataset(x, y), batch_size=args.batch_size, drop_last=True)
    losses = []
    done = False
    for _ in job.epochs(100):
        for xb, yb in loader:
            loss = job.step(loss_fn=nn.functional.mse_loss, inputs=xb, target=yb)
            losses.append(float(loss))
            time.sleep(args.sleep)
            if args.sigterm_at is not None and job.rank == 0 and job.step_count == args.sigterm_at:
                os.kill(os.getpid(), signal.SIGTERM)
            if job.step_count >= args.steps and job.micro_step == 0:
                done = True
                break
        if done:
            break
    logged = job.log(loss=losses[-1])
    preds = job.predict(x[:8])
    if job.rank == 0:
        Path(args.out, "result.json").write_text(
            json.dumps({"losses": losses, "logged": logged["loss"], "predict": preds.tolist(), "steps": job.step_count})
        )
    job.finish()


if __name__ == "__main__":
    main()
