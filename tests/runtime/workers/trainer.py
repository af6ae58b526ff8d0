"""A small deterministic training job for the runtime's multi-process tests.

Writes, per rank, a JSON record to --out: final parameters, step count, the
step it resumed from, and (with --trace) every sample index it trained on.
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
from torch.utils.data import Dataset

import corral


class Indexed(Dataset):
    """Synthetic regression data that also returns each sample's index."""

    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(1234)
        self.x = torch.randn(n, 8, generator=g, dtype=torch.float64)
        w = torch.arange(1.0, 9.0, dtype=torch.float64)
        self.y = self.x @ w + 0.1 * torch.randn(n, generator=g, dtype=torch.float64)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i], i


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--checkpoint-dir", default=None)
    p.add_argument("--checkpoint-every", type=int, default=None)
    p.add_argument("--kill-rank", type=int, default=None, help="SIGKILL this rank at --kill-step on attempt 0")
    p.add_argument("--kill-step", type=int, default=None)
    p.add_argument("--sleep", type=float, default=0.0, help="seconds per step (to leave time for signals)")
    p.add_argument(
        "--sleep-per-replica",
        type=float,
        default=0.0,
        help="extra seconds per step for each replica beyond the first (a job that scales poorly)",
    )
    p.add_argument(
        "--per-run",
        action="store_true",
        help="name the samples file by the step the run resumed from, so runs started afresh "
        "by the service (each attempt 0) keep their own files",
    )
    p.add_argument("--check-sync", action="store_true")
    p.add_argument("--strategy", default="ddp")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--partition", default="strided")
    args = p.parse_args()

    job = corral.init(
        strategy=args.strategy,
        precision=args.precision,
        grad_accum=args.grad_accum,
        checkpoint_dir=args.checkpoint_dir,
        checkpoint_every=args.checkpoint_every,
        seed=0,
    )
    torch.manual_seed(0)
    model = nn.Linear(8, 1).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model, opt, loader = job.prepare(model, opt, Indexed(args.n), batch_size=args.batch_size, partition=args.partition)
    record: dict = {
        "rank": job.rank,
        "world_size": job.world_size,
        "resumed_from": job.restored_from,
        "attempt": int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0)),
        "samples": [],
        "sync": [],
        "micro": [],
    }
    if args.check_sync:
        # Right before each optimizer step, compare this rank's gradient with every other rank's.
        def pre_step(optimizer, *_):
            grads = torch.cat([q.grad.flatten() for q in model.parameters()])
            gathered = [torch.zeros_like(grads) for _ in range(job.world_size)]
            torch.distributed.all_gather(gathered, grads)
            record["sync"].append(all(torch.allclose(g, gathered[0]) for g in gathered))

        opt.register_step_pre_hook(pre_step)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = f"{record['attempt']}-from{job.restored_from or 0}" if args.per_run else f"{record['attempt']}"
    samples_log = open(out / f"samples-{job.rank}-{tag}.jsonl", "w")
    pause = args.sleep + args.sleep_per_replica * (job.world_size - 1)
    done = False
    for epoch in job.epochs(args.epochs):
        for x, y, idx in loader:
            loss = ((model(x).squeeze(-1) - y) ** 2).mean()
            # One line per micro-step (with the optimizer step it feeds, for grad_accum=1), written
            # before job.step, which may exit on preemption, and flushed so it survives a SIGKILL.
            samples_log.write(json.dumps([epoch, job.step_count + 1, idx.tolist()]) + "\n")
            samples_log.flush()
            before = job.step_count
            job.step(loss)
            if args.check_sync and job.step_count == before:
                # A micro-step inside the accumulation window: no all-reduce happened.
                grads = torch.cat([q.grad.flatten() for q in model.parameters()])
                gathered = [torch.zeros_like(grads) for _ in range(job.world_size)]
                torch.distributed.all_gather(gathered, grads)
                record["micro"].append(all(torch.allclose(g, gathered[0]) for g in gathered))
            if pause:
                time.sleep(pause)
            if args.kill_rank == job.rank and record["attempt"] == 0 and job.step_count == args.kill_step:
                with open(out / f"trace-{job.rank}-{record['attempt']}.json", "w") as f:
                    json.dump(record, f)
                os.kill(os.getpid(), signal.SIGKILL)
            if args.max_steps is not None and job.step_count >= args.max_steps:
                done = True
                break
        if done:
            break
    params = [q.detach().flatten().tolist() for q in job.strategy.unwrap(model).parameters()]
    record.update(params=params, steps=job.step_count, epoch=job.epoch)
    with open(out / f"trace-{job.rank}-{record['attempt']}.json", "w") as f:
        json.dump(record, f)
    job.finish()


if __name__ == "__main__":
    main()
