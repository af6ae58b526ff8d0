"""Synchronous vs asynchronous distributed gradient descent on synthetic linear regression.

    python examples/linear_regression_ps.py [--nproc 4] [--servers 2] [--straggler 1:3.0] [--png out.png]

The driver runs the same job twice under `corral run --nproc N --servers S`:
with `consistency="bsp"` (every step waits for all workers' gradients, which
the servers average) and with `consistency="asp"` (each worker's gradient is
applied as it arrives, nobody waits). By default rank 1 is a straggler, three
times slower. It prints both loss curves (full-data MSE after each epoch, and
the wall time), the recovered weights next to the true ones, and writes a PNG
of the two curves against epochs and against seconds.

One run on its own (what the driver starts):

    corral run --nproc 4 --servers 2 examples/linear_regression_ps.py --consistency asp --result asp.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def train(args: argparse.Namespace) -> None:
    """One worker of one run; rank 0 writes the loss curve and the weights to --result."""
    import torch
    from torch import nn

    import corral
    from linear_regression import synthetic  # same data as the DDP example (this folder is on sys.path)

    job = corral.init(strategy="ps", consistency=args.consistency)
    data, w_true, b_true = synthetic(args.n, args.dim, args.noise)
    torch.manual_seed(0)
    net = nn.Linear(args.dim, 1)
    opt = torch.optim.SGD(net.parameters(), lr=args.lr)
    net, opt, loader = job.prepare(net, opt, data, batch_size=args.batch_size)
    x_all, y_all = data.tensors

    def mse() -> float:
        with torch.no_grad():
            return ((net(x_all).squeeze(-1) - y_all) ** 2).mean().item()

    # Samples inside the servers' weights per job step: bsp averages N batches per step;
    # under asp job.step_count is the global step, one worker's batch each.
    per_step = args.batch_size * (job.world_size if args.consistency == "bsp" else 1)
    curve = [(0, 0.0, mse())]  # after each epoch: (epoch, seconds, mse)
    trace = [(0.0, 0.0, mse())]  # after each of rank 0's steps: (epochs of data seen, seconds, mse)
    start = time.perf_counter()
    steps = 0
    for epoch in job.epochs(args.epochs):
        for x, y in loader:
            job.step(((net(x).squeeze(-1) - y) ** 2).mean())
            steps += 1
            if job.is_main:
                trace.append((min(job.step_count * per_step / args.n, epoch + 1.0), time.perf_counter() - start, mse()))
        # Every replica holds the servers' values at an epoch's end (bsp: always; asp: pulled).
        curve.append((epoch + 1, time.perf_counter() - start, mse()))
    my_steps = torch.tensor([float(steps)])
    if job.distributed:
        gathered = [torch.zeros(1) for _ in range(job.world_size)]
        torch.distributed.all_gather(gathered, my_steps)
        per_worker = [int(t.item()) for t in gathered]
    else:
        per_worker = [steps]
    if job.is_main:
        result = {
            "consistency": args.consistency,
            "curve": curve,
            "trace": trace,
            "steps_per_worker": per_worker,
            "w": net.weight.detach().flatten().tolist(),
            "b": net.bias.item(),
            "w_true": w_true.tolist(),
            "b_true": b_true,
        }
        Path(args.result).write_text(json.dumps(result))
    job.finish()


def drive(args: argparse.Namespace) -> None:
    """Run bsp and asp, print both curves and the weights, write the PNG."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for consistency in ("bsp", "asp"):
            result = Path(tmp) / f"{consistency}.json"
            cmd = [
                sys.executable,
                "-m",
                "corral.cli",
                "run",
                "--nproc",
                str(args.nproc),
                "--servers",
                str(args.servers),
                __file__,
                "--consistency",
                consistency,
                "--result",
                str(result),
                "--epochs",
                str(args.epochs),
                "--lr",
                str(args.lr),
                "--n",
                str(args.n),
                "--batch-size",
                str(args.batch_size),
            ]
            env = dict(os.environ, OMP_NUM_THREADS="1")
            if args.straggler:
                env["CORRAL_STRAGGLER"] = args.straggler
            console.print(
                f"[bold]{consistency}[/]: corral run --nproc {args.nproc} --servers {args.servers}"
                + (f"  (CORRAL_STRAGGLER={args.straggler})" if args.straggler else "")
            )
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                sys.stderr.write(proc.stdout + proc.stderr)
                sys.exit(proc.returncode)
            results[consistency] = json.loads(result.read_text())

    bsp, asp = results["bsp"], results["asp"]
    curves = Table(title="full-data MSE after each epoch")
    for col in ("epoch", "bsp mse", "bsp s", "asp mse", "asp s"):
        curves.add_column(col, justify="right")
    for (e, tb, lb), (_, ta, la) in zip(bsp["curve"], asp["curve"]):
        curves.add_row(str(e), f"{lb:.5f}", f"{tb:.2f}", f"{la:.5f}", f"{ta:.2f}")
    console.print(curves)
    console.print(f"optimizer steps per worker: bsp {bsp['steps_per_worker']}, asp {asp['steps_per_worker']}")

    weights = Table(title="recovered weights")
    for col in ("", "true", "bsp", "asp"):
        weights.add_column(col, justify="right")
    for i, t in enumerate(bsp["w_true"]):
        weights.add_row(f"w[{i}]", f"{t:.4f}", f"{bsp['w'][i]:.4f}", f"{asp['w'][i]:.4f}")
    weights.add_row("bias", f"{bsp['b_true']:.4f}", f"{bsp['b']:.4f}", f"{asp['b']:.4f}")
    console.print(weights)
    for name, r in results.items():
        err = max(abs(a - b) for a, b in zip(r["w"], r["w_true"]))
        console.print(
            f"{name}: max |w - w_true| = {err:.4f}, final mse {r['curve'][-1][2]:.5f}, {r['curve'][-1][1]:.2f} s"
        )
    plot(results, Path(args.png), args)
    console.print(f"wrote {args.png}")


def plot(results: dict, path: Path, args: argparse.Namespace) -> None:
    """Two panels: MSE against epochs of data and against seconds, bsp and asp on each (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_epoch, by_time) = plt.subplots(1, 2, figsize=(10, 4))
    for name, style in (("bsp", "-"), ("asp", "--")):
        epochs, seconds, mse = zip(*results[name]["trace"])
        by_epoch.plot(epochs, mse, style, label=f"{name} (rank 0, after each step)")
        by_time.plot(seconds, mse, style, label=name)
    by_epoch.set(
        xlabel="epochs of data in the servers' weights", ylabel="full-data MSE", yscale="log", title="loss per epoch"
    )
    by_time.set(xlabel="seconds of training", ylabel="full-data MSE", yscale="log", title="loss over wall time")
    for ax in (by_epoch, by_time):
        ax.grid(True, alpha=0.3)
        ax.legend()
    straggler = f", straggler {args.straggler}" if args.straggler else ""
    fig.suptitle(f"linear regression: {args.nproc} workers, {args.servers} servers{straggler}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--consistency", default=None, help="run one worker of this consistency (under corral run)")
    p.add_argument("--result", default="result.json", help="where rank 0 writes the run's curve (one run)")
    p.add_argument("--nproc", type=int, default=4)
    p.add_argument("--servers", type=int, default=2)
    p.add_argument("--straggler", default="1:3.0", help="CORRAL_STRAGGLER for both runs ('' for none)")
    p.add_argument("--png", default="linear_regression_ps.png")
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--dim", type=int, default=8)
    p.add_argument("--noise", type=float, default=0.1)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=32, help="per worker step")
    p.add_argument("--lr", type=float, default=0.02)
    args = p.parse_args()
    if args.consistency is not None:
        train(args)
    else:
        drive(args)


if __name__ == "__main__":
    main()
