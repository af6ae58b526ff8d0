"""Every environment variable corral reads or sets, one small function each.

The launcher writes the torchrun variables; the Job API reads them. Keeping
the names in one module means a worker started by torchrun, by `corral run`
or by the service sees the same contract.
"""

from __future__ import annotations

import os

# Kept importable as env.PREEMPTED_EXIT_CODE (defined in exitcodes, the one place).
from corral.runtime.exitcodes import PREEMPTED_EXIT_CODE as PREEMPTED_EXIT_CODE

CHECKPOINT_DIR = "CORRAL_CHECKPOINT_DIR"
STRAGGLER = "CORRAL_STRAGGLER"
# Parameter servers (`corral run --servers S`): workers learn S; each server its index and N.
PS_SERVERS = "CORRAL_PS_SERVERS"
PS_WORKERS = "CORRAL_PS_WORKERS"
PS_SERVER_INDEX = "CORRAL_PS_SERVER_INDEX"
# Set by the service in every run it starts: where and as whom rank 0 reports metrics.
SERVER = "CORRAL_SERVER"
JOB_ID = "CORRAL_JOB_ID"
JOB_TOKEN = "CORRAL_JOB_TOKEN"
# A PEM file of the CA(s) to verify an https:// CORRAL_SERVER against (default: the system store).
CA_CERT = "CORRAL_CA_CERT"


def _int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def rank() -> int:
    """Global rank of this worker (0 without a launcher)."""
    return _int("RANK", 0)


def local_rank() -> int:
    """Rank of this worker on its node (0 without a launcher)."""
    return _int("LOCAL_RANK", 0)


def world_size() -> int:
    """Number of workers in the job (1 without a launcher)."""
    return _int("WORLD_SIZE", 1)


def local_world_size() -> int:
    """Number of workers on this node."""
    return _int("LOCAL_WORLD_SIZE", world_size())


def num_nodes() -> int:
    """Nodes the gang spans: WORLD_SIZE / LOCAL_WORLD_SIZE as torchrun sets them (1 alone)."""
    return max(1, world_size() // max(1, local_world_size()))


def restart_count() -> int:
    """How many times the launcher restarted this gang."""
    return _int("TORCHELASTIC_RESTART_COUNT", 0)


def under_launcher() -> bool:
    """True when a launcher (corral run or torchrun) set the rendezvous variables."""
    return "MASTER_ADDR" in os.environ and "MASTER_PORT" in os.environ and "RANK" in os.environ


def checkpoint_dir() -> str | None:
    """Directory the service asks the job to checkpoint into, if any."""
    return os.environ.get(CHECKPOINT_DIR) or None


def server() -> str | None:
    """Base URL of the corral service that started this run (e.g. http://127.0.0.1:8765), if any."""
    return os.environ.get(SERVER) or None


def job_id() -> str | None:
    """The service's id of this job, if the service started it."""
    return os.environ.get(JOB_ID) or None


def job_token() -> str | None:
    """The bearer token this run reports its metrics with, if the service started it."""
    return os.environ.get(JOB_TOKEN) or None


def ca_cert() -> str | None:
    """The CA file to verify an https service with (CORRAL_CA_CERT), if one is set."""
    return os.environ.get(CA_CERT) or None


def straggler_factor(rank_: int) -> float:
    """Slow-down factor for this rank from CORRAL_STRAGGLER="RANK:FACTOR[,RANK:FACTOR]" (experiments only)."""
    spec = os.environ.get(STRAGGLER, "")
    for item in filter(None, (s.strip() for s in spec.split(","))):
        r, _, factor = item.partition(":")
        if int(r) == rank_:
            return float(factor)
    return 1.0


def ps_servers() -> int:
    """Parameter-server processes the launcher started beside the workers (0: none)."""
    return _int(PS_SERVERS, 0)


def ps_workers() -> int:
    """Number of workers, as a parameter server sees it."""
    return _int(PS_WORKERS, 0)


def ps_server_index() -> int:
    """This parameter server's index, 0..S-1."""
    return _int(PS_SERVER_INDEX, 0)


def worker_env(
    *,
    rank_: int,
    world_size_: int,
    master_addr: str,
    master_port: int,
    restart_count_: int,
    max_restarts: int,
    run_id: str,
    servers: int = 0,
    local_rank_: int | None = None,
    local_world_size_: int | None = None,
    group_rank: int = 0,
    group_world_size: int = 1,
) -> dict[str, str]:
    """The variables torchrun sets for one worker (and how many PS servers run); one node unless told."""
    return {
        PS_SERVERS: str(servers),
        "RANK": str(rank_),
        "LOCAL_RANK": str(rank_ if local_rank_ is None else local_rank_),
        "WORLD_SIZE": str(world_size_),
        "LOCAL_WORLD_SIZE": str(world_size_ if local_world_size_ is None else local_world_size_),
        "GROUP_RANK": str(group_rank),
        "GROUP_WORLD_SIZE": str(group_world_size),
        "ROLE_RANK": str(rank_),
        "ROLE_WORLD_SIZE": str(world_size_),
        "ROLE_NAME": "default",
        "MASTER_ADDR": master_addr,
        "MASTER_PORT": str(master_port),
        "TORCHELASTIC_RESTART_COUNT": str(restart_count_),
        "TORCHELASTIC_MAX_RESTARTS": str(max_restarts),
        "TORCHELASTIC_RUN_ID": run_id,
        # The launcher hosts the TCPStore (a fresh one per attempt), so every
        # rank connects as a client and no rank reads a dead gang's keys.
        "TORCHELASTIC_USE_AGENT_STORE": "True",
    }


def server_env(
    *,
    index: int,
    workers: int,
    servers: int,
    master_addr: str,
    master_port: int,
    restart_count_: int,
    max_restarts: int,
    run_id: str,
) -> dict[str, str]:
    """The variables of parameter server `index`: the rendezvous, N, S and its index (no RANK: not a worker)."""
    return {
        PS_SERVER_INDEX: str(index),
        PS_WORKERS: str(workers),
        PS_SERVERS: str(servers),
        "MASTER_ADDR": master_addr,
        "MASTER_PORT": str(master_port),
        "TORCHELASTIC_RESTART_COUNT": str(restart_count_),
        "TORCHELASTIC_MAX_RESTARTS": str(max_restarts),
        "TORCHELASTIC_RUN_ID": run_id,
    }
