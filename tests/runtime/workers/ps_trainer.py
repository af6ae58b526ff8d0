"""A deterministic training job for the parameter-server tests (and the same job under ddp, to compare).

Writes, per rank and attempt, trace-RANK-ATTEMPT.json to --out (final
parameters, the job's step count, this worker's own optimizer steps, the step
it resumed from, the mean loss of each epoch) and samples-RANK-ATTEMPT.jsonl
(one line [epoch, sample indices] per batch).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

import corral

TRUE_W = torch.arange(1.0, 9.0, dtype=torch.float64)


def data(n: int) -> TensorDataset:
    """y = x . (1..8) + 0.1 noise, with the sample index as a third tensor."""
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(n, 8, generator=g, dtype=torch.float64)
    y = x @ TRUE_W + 0.1 * torch.randn(n, generator=g, dtype=torch.float64)
    return TensorDataset(x, y, torch.arange(n))


def build(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == "linear":
        return nn.Linear(8, 1).double()
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 1)).double()


def kill_server(index: int) -> None:
    """SIGKILL parameter server `index` (a sibling process under the same launcher)."""
    import psutil

    for proc in psutil.Process(os.getppid()).children():
        cmd = " ".join(proc.cmdline())
        if "corral.runtime.ps.server" in cmd and proc.environ().get("CORRAL_PS_SERVER_INDEX") == str(index):
            proc.send_signal(signal.SIGKILL)
            return
    raise RuntimeError(f"server {index} not found")


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
    p.add_argument("--kill-server", type=int, default=None, help="rank 0 SIGKILLs this server at --kill-step")
    p.add_argument("--kill-step", type=int, default=None)
    p.add_argument("--sleep", type=float, default=0.0, help="seconds per step")
    p.add_argument("--strategy", default="ps")
    p.add_argument("--servers", type=int, default=None)
    p.add_argument("--consistency", default="bsp")
    p.add_argument("--sharding", default="range")
    p.add_argument("--optimizer", default="sgd", choices=["sgd", "adam"])
    p.add_argument("--model", default="mlp", choices=["linear", "mlp"])
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--schedule", action="store_true", help="StepLR(step_size=5, gamma=0.5) per optimizer step")
    args = p.parse_args()

    options = {}
    if args.strategy == "ps":
        options = {"servers": args.servers, "consistency": args.consistency, "sharding": args.sharding}
    job = corral.init(
        strategy=args.strategy,
        grad_accum=args.grad_accum,
        checkpoint_dir=args.checkpoint_dir,
        checkpoint_every=args.checkpoint_every,
        seed=0,
        **options,
    )
    model = build(args.model)
    if args.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5) if args.schedule else None
    model, opt, loader = job.prepare(model, opt, data(args.n), batch_size=args.batch_size)
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0))
    record: dict = {
        "rank": job.rank,
        "world_size": job.world_size,
        "resumed_from": job.restored_from,
        "attempt": attempt,
        "losses": [],
        "my_steps": 0,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def dump() -> None:
        with open(out / f"trace-{job.rank}-{attempt}.json", "w") as f:
            json.dump(record, f)

    # One line per batch, flushed before job.step (which may exit on preemption) so it survives a SIGKILL.
    samples_log = open(out / f"samples-{job.rank}-{attempt}.jsonl", "w")
    start = time.perf_counter()
    done = False
    for epoch in job.epochs(args.epochs):
        total, count = 0.0, 0
        for x, y, idx in loader:
            loss = ((model(x).squeeze(-1) - y) ** 2).mean()
            samples_log.write(json.dumps([epoch, idx.tolist()]) + "\n")
            samples_log.flush()
            job.step(loss)
            if job.micro_step == 0:  # this micro-step ended an optimizer step (of this worker)
                record["my_steps"] += 1
                if sched is not None:
                    sched.step()
            total, count = total + loss.item(), count + 1
            if args.sleep:
                time.sleep(args.sleep)
            if attempt == 0 and record["my_steps"] == args.kill_step:
                if args.kill_rank == job.rank:
                    dump()
                    os.kill(os.getpid(), signal.SIGKILL)
                if args.kill_server is not None and job.rank == 0:
                    kill_server(args.kill_server)
                    time.sleep(30)  # the launcher stops the gang long before this ends
            if args.max_steps is not None and job.step_count >= args.max_steps:
                done = True
                break
        record["losses"].append(total / max(count, 1))
        if done:
            break
    record.update(
        params=[q.detach().flatten().tolist() for q in model.parameters()],
        steps=job.step_count,
        epoch=job.epoch,
        seconds=time.perf_counter() - start,
    )
    dump()
    job.finish()
    # Skip interpreter teardown. With a DDP model still alive (the --strategy ddp reference runs),
    # torch's gloo threads can abort a finished process at exit (SIGABRT, "terminate called without
    # an active exception", about 1 run in 6 with 4 ranks here); that is not what these tests test.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
