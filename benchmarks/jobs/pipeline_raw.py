"""torch.distributed.pipelining without corral, for benchmarks/pipeline.py: the native baseline of the same run.

    corral run --nproc P pipeline_raw.py OUT --widths 512,... --microbatches M --schedule gpipe|1f1b [--steps 30]

Equal layer counts per stage, Adam, MSE on random data of the probe's shapes;
rank 0 writes OUT/raw.json with the median step time (schedule.step + optimizer step).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--widths", required=True)
    p.add_argument("--microbatches", type=int, required=True)
    p.add_argument("--schedule", default="1f1b")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    args = p.parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    widths = [int(w) for w in args.widths.split(",")]
    torch.manual_seed(0)
    layers = [nn.Sequential(nn.Linear(a, b), nn.ReLU()) for a, b in zip(widths, widths[1:])]
    per = len(layers) // world
    sub = nn.Sequential(*layers[rank * per : (rank + 1) * per])
    stage = PipelineStage(sub, rank, world, torch.device("cpu"))
    cls = Schedule1F1B if args.schedule == "1f1b" else ScheduleGPipe
    schedule = cls(stage, args.microbatches, loss_fn=F.mse_loss)
    opt = torch.optim.Adam(sub.parameters(), lr=1e-4)
    x, y = torch.randn(args.batch, widths[0]), torch.randn(args.batch, widths[-1])
    times = []
    for _ in range(args.steps + args.warmup):
        t0 = time.perf_counter()
        if rank == 0:
            schedule.step(x)
        elif rank == world - 1:
            schedule.step(target=y, losses=[])
        else:
            schedule.step()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t0)
    if rank == 0:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        Path(args.out, "raw.json").write_text(json.dumps({"step_s": statistics.median(times[args.warmup :])}))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
