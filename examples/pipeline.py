"""Train a deep MLP on scikit-learn's digits split over pipeline stages (model parallel), optionally DP x PP.

    corral run --nproc 4 examples/pipeline.py --stages 4                 # 4 stages
    corral run --nproc 4 examples/pipeline.py --stages 2 --schedule gpipe  # 2 replicas x 2 stages

The model is an nn.Sequential of 12 blocks of varying width; corral profiles
each block on the first batch and splits them into the stages that minimise
the slowest one (`balance="auto"`), then runs the schedule (1F1B by default)
over microbatches. Each rank prints the parameters it holds; rank 0 prints the
chosen split and, at the end, the test accuracy. Checkpoints hold the whole
model, so the job resumes at another stage count or under `ddp`.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from digits import data  # examples/digits.py: this script's folder is on sys.path
from torch import nn

import corral

WIDTHS = (64, 256, 512, 512, 256, 256, 128, 128, 128, 64, 64, 64)


def model() -> nn.Sequential:
    """11 blocks (Linear, LayerNorm, ReLU) of the widths above, then a 10-way head."""
    torch.manual_seed(0)
    blocks: list[nn.Module] = []
    for a, b in zip(WIDTHS, WIDTHS[1:]):
        blocks.append(nn.Sequential(nn.Linear(a, b), nn.LayerNorm(b), nn.ReLU()))
    blocks.append(nn.Linear(WIDTHS[-1], 10))
    return nn.Sequential(*blocks)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--stages", type=int, default=4)
    p.add_argument("--microbatches", type=int, default=None, help="default: 2 x stages")
    p.add_argument("--schedule", default="1f1b", choices=["1f1b", "gpipe", "interleaved"])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32, help="per data-parallel replica")
    p.add_argument("--lr", type=float, default=0.003)
    p.add_argument("--checkpoint-dir", default=None)
    args = p.parse_args()

    job = corral.init(
        strategy="pipeline",
        stages=args.stages,
        microbatches=args.microbatches or 2 * args.stages,
        schedule=args.schedule,
        balance="auto",
        checkpoint_dir=args.checkpoint_dir,
    )
    train, test = data()
    net = model()
    total = sum(p.numel() for p in net.parameters())
    opt = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=0.9)
    net, opt, loader = job.prepare(net, opt, train, batch_size=args.batch_size, drop_last=True)
    held = sum(p.numel() for p in net.parameters())
    print(
        f"rank {job.rank} (replica {job.dp_rank}): {held:,} of {total:,} parameters "
        f"({held * 4 / 2**20:.2f} MB + the same again of momentum)",
        flush=True,
    )
    for _ in job.epochs(args.epochs):
        losses = [float(job.step(loss_fn=F.cross_entropy, inputs=x, target=y)) for x, y in loader]
        job.log(loss=sum(losses) / max(len(losses), 1))
    x, y = test.tensors
    acc = (job.predict(x).argmax(1) == y).float().mean().item()
    if job.is_main:
        print(f"test accuracy {acc:.4f}")
    job.finish()


if __name__ == "__main__":
    main()
