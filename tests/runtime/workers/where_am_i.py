"""A plain torchrun script that records where it ran: joins the gloo group, all-reduces, writes its env."""

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

KEYS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE", "MASTER_ADDR",
        "MASTER_PORT", "CUDA_VISIBLE_DEVICES", "CORRAL_NODE", "CORRAL_RAY_NODE_ID", "CORRAL_JOB_ID",
        "CORRAL_CHECKPOINT_DIR", "TORCHELASTIC_ERROR_FILE")  # fmt: skip

dist.init_process_group("gloo")
t = torch.tensor([float(dist.get_rank() + 1)])
dist.all_reduce(t)
n = dist.get_world_size()
assert t.item() == n * (n + 1) / 2, t
out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
(out / f"where-{dist.get_rank()}.json").write_text(json.dumps({k: os.environ.get(k) for k in KEYS}))
print(f"rank {dist.get_rank()} of {n} on {os.environ.get('CORRAL_NODE')}: sum {t.item():g}")
dist.destroy_process_group()
