"""What does the corral Job loop cost over a hand-written torch DDP loop?

    python benchmarks/ddp_overhead.py [--steps 400] [--batch-size 32]

Runs `corral run --nproc N` for N in 1 and 2. Inside each worker the same
model (digits MLP 64-256-256-10), data and optimizer are trained by two loops
in alternating blocks of steps, in the same processes and process group:

- native: torch DDP + a DistributedSampler DataLoader, zero_grad/backward/step;
- native-gather: the same DDP loop fed by one tensor gather per batch, which is
  what corral's loader does for a TensorDataset (isolates the loop's own cost);
- corral: corral.init + job.prepare + job.step.

Prints the median step time of each, the ratios corral/native (goal <= 1.03)
and corral/native-gather
and samples/s, and writes benchmarks/results/ddp_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "ddp_overhead.json"


def worker(args: argparse.Namespace) -> None:
    """One rank: alternate native and corral blocks, rank 0 writes the timings."""
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from sklearn.datasets import load_digits
    from torch import nn
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

    import corral

    job = corral.init(strategy="ddp", seed=0)  # starts the process group both loops share
    x, y = load_digits(return_X_y=True)
    data = TensorDataset(torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y))

    def mlp() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))

    # native torch DDP, as the tutorials write it
    native = mlp()
    if job.world_size > 1:
        native = nn.parallel.DistributedDataParallel(native)
    native_opt = torch.optim.SGD(native.parameters(), lr=0.05, momentum=0.9)
    sampler = (
        DistributedSampler(data, num_replicas=job.world_size, rank=job.rank, shuffle=True, seed=0)
        if job.world_size > 1
        else None
    )
    native_loader = DataLoader(data, batch_size=args.batch_size, sampler=sampler, shuffle=sampler is None)

    # corral
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model, opt, loader = job.prepare(model, opt, data, batch_size=args.batch_size)

    def native_batches():
        epoch = 0
        while True:
            if sampler is not None:
                sampler.set_epoch(epoch)
            yield from native_loader
            epoch += 1

    def corral_batches():
        while True:
            for _ in job.epochs(job.epoch + 1):
                yield from loader

    def gathered_batches():
        # The data path corral uses for a TensorDataset (one gather per batch),
        # so that corral/native-gather isolates the cost of the step loop itself.
        epoch = 0
        while True:
            if sampler is not None:
                sampler.set_epoch(epoch)
            order = torch.tensor(list(sampler if sampler is not None else range(len(data))))
            for i in range(0, len(order), args.batch_size):
                idx = order[i : i + args.batch_size]
                yield data.tensors[0][idx], data.tensors[1][idx]
            epoch += 1

    nb, gb, cb = native_batches(), gathered_batches(), corral_batches()

    def native_step() -> None:
        xb, yb = next(nb)
        native_opt.zero_grad(set_to_none=True)
        F.cross_entropy(native(xb), yb).backward()
        native_opt.step()

    def gather_step() -> None:
        xb, yb = next(gb)
        native_opt.zero_grad(set_to_none=True)
        F.cross_entropy(native(xb), yb).backward()
        native_opt.step()

    def corral_step() -> None:
        xb, yb = next(cb)
        job.step(F.cross_entropy(model(xb), yb))

    loops = (("native", native_step), ("native_gather", gather_step), ("corral", corral_step))
    times: dict[str, list[float]] = {name: [] for name, _ in loops}
    for _ in range(args.warmup):
        for _, fn in loops:
            fn()
    block = 50
    for _ in range(max(1, args.steps // block)):
        for name, fn in loops:
            if job.world_size > 1:
                dist.barrier()
            for _ in range(block):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    if job.is_main:
        with open(args.out, "w") as f:
            json.dump({"world_size": job.world_size, "batch_size": args.batch_size, "times": times}, f)
    job.finish()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=400, help="timed steps per loop (>= 200)")
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=32, help="per worker")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return

    from rich.console import Console
    from rich.table import Table

    rows = []
    for nproc in (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "times.json"
            cmd = [
                sys.executable,
                "-m",
                "corral.cli",
                "run",
                "--nproc",
                str(nproc),
                __file__,
                "--worker",
                "--out",
                str(out),
                "--steps",
                str(args.steps),
                "--warmup",
                str(args.warmup),
                "--batch-size",
                str(args.batch_size),
            ]
            subprocess.run(
                cmd, check=True, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.DEVNULL
            )
            result = json.loads(out.read_text())
        med = {k: statistics.median(v) for k, v in result["times"].items()}
        global_batch = args.batch_size * nproc
        rows.append(
            {
                "world_size": nproc,
                "steps": len(result["times"]["corral"]),
                "native_ms": med["native"] * 1e3,
                "native_gather_ms": med["native_gather"] * 1e3,
                "corral_ms": med["corral"] * 1e3,
                "ratio": med["corral"] / med["native"],
                "ratio_gather": med["corral"] / med["native_gather"],
                "native_samples_s": global_batch / med["native"],
                "corral_samples_s": global_batch / med["corral"],
            }
        )
    table = Table(title=f"corral Job loop vs native torch DDP (digits MLP, batch {args.batch_size}/worker, gloo)")
    for col in (
        "world",
        "steps",
        "native ms",
        "native-gather ms",
        "corral ms",
        "corral/native",
        "corral/native-gather",
        "native samples/s",
        "corral samples/s",
    ):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            str(r["world_size"]),
            str(r["steps"]),
            f"{r['native_ms']:.3f}",
            f"{r['native_gather_ms']:.3f}",
            f"{r['corral_ms']:.3f}",
            f"{r['ratio']:.3f}",
            f"{r['ratio_gather']:.3f}",
            f"{r['native_samples_s']:.0f}",
            f"{r['corral_samples_s']:.0f}",
        )
    Console().print(table)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps({"goal": "corral/native <= 1.03", "batch_size": args.batch_size, "rows": rows}, indent=2)
    )
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
