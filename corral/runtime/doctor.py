"""`corral doctor`: can this machine train? Versions, devices, backends, and a real 2-process all-reduce."""

from __future__ import annotations

import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass


@dataclass
class Check:
    """One line of the doctor's table."""

    name: str
    value: str
    ok: bool = True
    required: bool = False  # a failed required check means the machine cannot train on CPU


_ALLREDUCE = textwrap.dedent(
    """
    import os, sys, datetime
    import torch, torch.distributed as dist
    def worker(rank, port):
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=30))
        t = torch.tensor([rank + 1.0])
        dist.all_reduce(t)
        dist.destroy_process_group()
        if t.item() != 3.0:
            sys.exit(1)
    if __name__ == "__main__":
        import torch.multiprocessing as mp
        mp.start_processes(worker, args=(int(sys.argv[1]),), nprocs=2, start_method="spawn")
        print("ok")
    """
)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _shm_size() -> str:
    try:
        usage = shutil.disk_usage("/dev/shm")
    except OSError:
        return "missing"
    return f"{usage.total / 2**30:.1f} GiB ({usage.free / 2**30:.1f} GiB free)"


def run_checks() -> list[Check]:
    """Every check the doctor reports, in table order."""
    checks = [Check("python", platform.python_version(), sys.version_info >= (3, 11), required=True)]
    try:
        import torch
        import torch.distributed as dist
    except ImportError as exc:  # pragma: no cover - the package depends on torch
        return [*checks, Check("torch", f"not importable: {exc}", False, required=True)]
    checks.append(Check("torch", torch.__version__))
    cuda = torch.cuda.is_available()
    checks.append(Check("CUDA", torch.version.cuda or "none (CPU build)" if not cuda else torch.version.cuda or "?"))
    if cuda:
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        checks.append(Check("devices", f"{torch.cuda.device_count()} GPU: {names}"))
    else:
        checks.append(Check("devices", "CPU only"))
    checks.append(Check("CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES", "(unset)")))
    backends = {
        "gloo": dist.is_available() and dist.is_gloo_available(),
        "nccl": dist.is_available() and dist.is_nccl_available(),
        "mpi": dist.is_available() and dist.is_mpi_available(),
    }
    checks.append(
        Check(
            "backends",
            ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in backends.items()),
            backends["gloo"],
            required=True,
        )
    )
    checks.append(Check("/dev/shm", _shm_size(), os.path.isdir("/dev/shm")))
    checks.append(Check("CPU count", str(os.cpu_count())))
    try:
        port = free_port()
        checks.append(Check("free port", f"127.0.0.1:{port}", True, required=True))
    except OSError as exc:
        return [*checks, Check("free port", f"cannot bind 127.0.0.1: {exc}", False, required=True)]
    checks.append(_allreduce_check(port))
    return checks


def _allreduce_check(port: int) -> Check:
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")
    # A real file: spawned children re-import the parent's main module by path.
    with tempfile.TemporaryDirectory() as tmp:
        script = os.path.join(tmp, "allreduce_check.py")
        with open(script, "w") as f:
            f.write(_ALLREDUCE)
        try:
            proc = subprocess.run(
                [sys.executable, script, str(port)], capture_output=True, text=True, timeout=90, env=env
            )
        except subprocess.TimeoutExpired:
            return Check("gloo all-reduce", "timed out after 90 s", False, required=True)
    if proc.returncode == 0 and "ok" in proc.stdout:
        return Check("gloo all-reduce", "2 processes on 127.0.0.1: ok", True, required=True)
    last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return Check("gloo all-reduce", f"failed: {last}", False, required=True)


def missing(checks: list[Check]) -> str | None:
    """One line naming what keeps the machine from training on CPU, or None."""
    bad = [c for c in checks if c.required and not c.ok]
    return "; ".join(f"{c.name}: {c.value}" for c in bad) if bad else None
