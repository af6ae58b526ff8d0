"""A plain torchrun script: no corral import. Reads the env, joins the group, all-reduces."""

import os
import sys

import torch
import torch.distributed as dist

REQUIRED = [
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RESTART_COUNT",
    "TORCHELASTIC_MAX_RESTARTS",
    "TORCHELASTIC_RUN_ID",
]
missing = [k for k in REQUIRED if k not in os.environ]
if missing:
    sys.exit(f"missing env: {missing}")
dist.init_process_group("gloo")
t = torch.tensor([float(dist.get_rank() + 1)])
dist.all_reduce(t)
n = dist.get_world_size()
assert t.item() == n * (n + 1) / 2, t
print(
    f"sum={t.item():g} rank={os.environ['RANK']} local={os.environ['LOCAL_RANK']} "
    f"restart={os.environ['TORCHELASTIC_RESTART_COUNT']}/{os.environ['TORCHELASTIC_MAX_RESTARTS']}"
)
dist.destroy_process_group()
