"""A timed MLP for benchmarks/pipeline.py: one JSON line per rank with its step times and the bytes it holds.

    corral run --nproc P pipeline_probe.py OUT --widths 512,512,... [--strategy pipeline --stages P
        --microbatches M --schedule 1f1b --balance auto|4,4] [--batch 64] [--steps 30] [--warmup 5]

Each layer is Linear(widths[i], widths[i+1]) + ReLU; the model is an nn.Sequential of them.
Every rank writes OUT/rank-<r>.json: its median step time over the timed steps (after
--warmup), the parameter and optimizer-state bytes it holds, and the chosen stage split.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

import corral


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--widths", required=True)
    p.add_argument("--strategy", default="pipeline")
    p.add_argument("--stages", type=int, default=2)
    p.add_argument("--microbatches", type=int, default=None)
    p.add_argument("--schedule", default="1f1b")
    p.add_argument("--balance", default="auto")
    p.add_argument("--batch", type=int, default=64, help="per data-parallel replica")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    args = p.parse_args()
    widths = [int(w) for w in args.widths.split(",")]
    options: dict = {}
    if args.strategy == "pipeline":
        balance = args.balance if args.balance == "auto" else [int(n) for n in args.balance.split(",")]
        options = {"stages": args.stages, "schedule": args.schedule, "balance": balance}
        options["microbatches"] = args.microbatches or args.stages
    job = corral.init(strategy=args.strategy, **options)
    torch.manual_seed(0)
    net = nn.Sequential(*[nn.Sequential(nn.Linear(a, b), nn.ReLU()) for a, b in zip(widths, widths[1:])])
    n = args.batch * (args.steps + args.warmup) * job.dp_size
    data = TensorDataset(torch.randn(n, widths[0]), torch.randn(n, widths[-1]))
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    net, opt, loader = job.prepare(net, opt, data, batch_size=args.batch, drop_last=True, shuffle=False)
    times = []
    last = time.perf_counter()
    for x, y in loader:
        job.step(loss_fn=F.mse_loss, inputs=x, target=y)
        now = time.perf_counter()
        times.append(now - last)
        last = now
        if len(times) >= args.steps + args.warmup:
            break
    params = [q for q in net.parameters() if q.numel()]
    state_bytes = sum(
        v.numel() * v.element_size() for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor)
    )
    split = getattr(job.strategy, "split", None)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.out, f"rank-{job.rank}.json").write_text(
        json.dumps(
            {
                "rank": job.rank,
                "step_s": statistics.median(times[args.warmup :]),
                "param_bytes": sum(q.numel() * q.element_size() for q in params),
                "optimizer_bytes": state_bytes,
                "split": list(split.counts) if split is not None else None,
                "stage_costs_s": list(split.costs) if split is not None else None,
            }
        )
    )
    job.finish()


if __name__ == "__main__":
    main()
