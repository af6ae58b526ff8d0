"""Softmax regression on digits that crashes once, to show a restart that resumes from the checkpoint.

    corral submit examples/demo/fail-once.yaml     # max_restarts: 1

On its first attempt the script exits 1 after --crash-after epochs. The
service restarts it (a new `corral run`); the checkpoint directory
($CORRAL_CHECKPOINT_DIR) survives restarts, so a marker file there tells the
second attempt that it is not the first, and the Job API resumes training
from the last epoch's checkpoint. Without a checkpoint directory it never
crashes (there would be no way to tell attempts apart).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import TensorDataset

import corral

MARKER = "crashed-once"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--crash-after", type=int, default=4, help="epochs the first attempt completes before exit 1")
    p.add_argument("--lr", type=float, default=0.1)
    args = p.parse_args()

    ckpt_dir = os.environ.get("CORRAL_CHECKPOINT_DIR")
    marker = Path(ckpt_dir) / MARKER if ckpt_dir else None
    first_attempt = marker is not None and not marker.exists()

    job = corral.init(checkpoint_dir=ckpt_dir)
    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x / 16.0, y, test_size=0.2, random_state=0, stratify=y)
    train = TensorDataset(torch.tensor(x_tr, dtype=torch.float32), torch.tensor(y_tr))
    x_te, y_te = torch.tensor(x_te, dtype=torch.float32), torch.tensor(y_te)
    net = nn.Linear(64, 10)
    opt = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=0.9)
    net, opt, loader = job.prepare(net, opt, train, batch_size=32)
    if job.restored_from is not None and job.is_main:
        print(f"resumed from step {job.restored_from} (epoch {job.epoch})", flush=True)
    for epoch in job.epochs(args.epochs):
        if first_attempt and epoch == args.crash_after:
            # The end-of-epoch checkpoint of the epoch before is already on disk.
            if job.is_main:
                assert marker is not None
                marker.touch()
                print(f"simulated crash after {epoch} epochs: exit 1 (the service restarts the job)", flush=True)
            sys.exit(1)
        total, n = 0.0, 0
        for xb, yb in loader:
            loss = F.cross_entropy(net(xb), yb)
            job.step(loss)
            total, n = total + loss.item(), n + 1
        with torch.no_grad():
            acc = (net(x_te).argmax(1) == y_te).float().mean().item()
        job.log(loss=total / max(n, 1), test_acc=acc)
    job.finish()


if __name__ == "__main__":
    main()
