"""A plain torchrun-style DDP script for benchmarks/gang_restart.py: the same file under `corral run` and `torchrun`.

    torchrun --nproc-per-node 2 benchmarks/jobs/restart_probe.py [--steps 400] [--sleep 0.05]

Each rank writes its pid to $PROBE_DIR/pid-<rank>-<attempt> once the process
group is up, and appends "<time.time()> <attempt> <step>" to $PROBE_DIR/steps-<rank>
after each training step (attempt = TORCHELASTIC_RESTART_COUNT). No corral API,
no special timeouts: init_process_group("gloo") as a user writes it.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--sleep", type=float, default=0.05)
    args = p.parse_args()
    out = Path(os.environ["PROBE_DIR"])
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    (out / f"pid-{rank}-{attempt}").write_text(str(os.getpid()))
    torch.manual_seed(0)
    model = nn.parallel.DistributedDataParallel(nn.Linear(32, 8))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    steps = open(out / f"steps-{rank}", "a", buffering=1)
    for step in range(args.steps):
        x = torch.randn(16, 32)
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps.write(f"{time.time()} {attempt} {step}\n")
        time.sleep(args.sleep)
    steps.close()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
