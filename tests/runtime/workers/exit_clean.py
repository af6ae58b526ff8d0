"""A short DDP run that ends normally after job.finish(), for the clean-exit regression test.

With --slow-gloo, torch's gloo worker threads run at the lowest CPU priority: the
main thread's wake-up then preempts a worker right after it completes a collective,
before it lets go of the collective's tensors. That widens a race (a gloo thread
dropping Python-owned tensors during interpreter shutdown aborts the process) from
rare to nearly every run, without changing what the job does.
Each rank prints the gloo threads still running after finish() and checks the model still runs.
"""

from __future__ import annotations

import argparse
import os

import torch
from torch import nn
from torch.utils.data import TensorDataset

import corral


def gloo_threads() -> list[str]:
    """Names of this process's gloo threads (Linux)."""
    names = (open(f"/proc/self/task/{tid}/comm").read().strip() for tid in os.listdir("/proc/self/task"))
    return sorted(n for n in names if "gloo" in n)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--slow-gloo", action="store_true")
    args = p.parse_args()

    job = corral.init()
    if args.slow_gloo:
        for tid in os.listdir("/proc/self/task"):
            if open(f"/proc/self/task/{tid}/comm").read().strip() == "pt_gloo_runloop":
                os.setpriority(os.PRIO_PROCESS, int(tid), 19)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 16, generator=g)
    data = TensorDataset(x, (x.sum(1) > 0).long())
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 2))
    model, opt, loader = job.prepare(net, torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9), data, batch_size=8)
    for _ in job.epochs(args.epochs):
        total = 0.0
        for xb, yb in loader:
            loss = nn.functional.cross_entropy(model(xb), yb)
            job.step(loss)
            total += loss.item()
        job.log(loss=total)
    job.finish()
    # The wrapped model still works after finish(), on this rank alone, like the module it wraps.
    same = torch.equal(model(x[:4]), net(x[:4]))
    print(f"rank {job.rank} gloo threads after finish: {gloo_threads()} forward ok: {same}", flush=True)


if __name__ == "__main__":
    main()
