"""A Job API script for benchmarks/ray_executor.py: marks when each rank's process started and when each step ended.

    ray_probe.py DIR [--steps 0] [--sleep 0.1] [--checkpoint-every 10]

Before any import, each rank writes "<time.time()> <pid>" to DIR/up-<rank>-<pid>
(the moment its user code runs). With --steps 0 it exits there. Otherwise it
trains a small DDP model through the Job API, checkpointing every
--checkpoint-every steps, and appends "<time.time()> <restored_from> <step>" to
DIR/steps-<rank> after each optimizer step (restored_from tells the runs apart).
"""

import os
import sys
import time

_started = time.time()
_out = sys.argv[1]
os.makedirs(_out, exist_ok=True)
with open(os.path.join(_out, f"up-{os.environ['RANK']}-{os.getpid()}"), "w") as _f:
    _f.write(f"{_started} {os.getpid()}\n")


def main() -> None:
    import argparse

    import torch
    from torch import nn
    from torch.utils.data import TensorDataset

    import corral

    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--steps", type=int, default=0)
    p.add_argument("--sleep", type=float, default=0.1)
    p.add_argument("--checkpoint-every", type=int, default=10)
    args = p.parse_args()
    if args.steps == 0:
        return
    job = corral.init(strategy="ddp", checkpoint_every=args.checkpoint_every, seed=0)
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(4096, 32, generator=g), torch.randn(4096, 1, generator=g))
    torch.manual_seed(0)
    net = nn.Linear(32, 1)
    model, _opt, loader = job.prepare(net, torch.optim.SGD(net.parameters(), lr=0.01), data, batch_size=8)
    log = open(os.path.join(args.out, f"steps-{job.rank}"), "a", buffering=1)
    for _ in job.epochs(1000):
        for x, y in loader:
            job.step(((model(x) - y) ** 2).mean())
            log.write(f"{time.time()} {job.restored_from or 0} {job.step_count}\n")
            time.sleep(args.sleep)
            if job.step_count >= args.steps:
                job.finish()
                return


if __name__ == "__main__":
    main()
