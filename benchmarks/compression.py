"""Gradient compression and local SGD against fp32 DDP: bytes per step, step time on shaped links, accuracy.

    sudo python benchmarks/compression.py [--nproc 2] [--epochs 15] [--steps 40]

The digits MLP 64-1024-1024-10 (1.1 M parameters, 4.4 MB of fp32 gradients a
step) on N workers (`benchmarks/jobs/compress_probe.py`), each option vs fp32
DDP in the same script:

- accuracy and bytes: full training (--epochs) on loopback;
- step time (the mean over --steps steps after 5 of warm-up: local SGD's
  averaging step counts): on loopback, and on loopback shaped to 1 Gbit/s and
  100 Mbit/s (a tbf qdisc: measured 838 and 97 Mbit/s for one TCP stream)
  inside a network namespace this script creates and removes (`ip netns`,
  `tc`; needs root). Every process of a run,
  launcher included, runs inside the namespace, so all gloo traffic crosses the
  shaped link.

Writes benchmarks/results/compression.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
PROBE = ROOT / "benchmarks" / "jobs" / "compress_probe.py"
RESULTS = ROOT / "benchmarks" / "results" / "compression.json"
CORRAL = str(Path(sys.executable).parent / "corral")
OPTIONS: dict[str, list[str]] = {
    "fp32": [],
    "fp16": ["--compression", "fp16"],
    "bf16": ["--compression", "bf16"],
    "powersgd:1": ["--compression", "powersgd:1"],
    "powersgd:4": ["--compression", "powersgd:4"],
    "local_sgd:8": ["--local-sgd", "8"],
}
LINKS = {"loopback": None, "1gbit": "1gbit", "100mbit": "100mbit"}
console = Console()


@contextmanager
def shaped(rate: str | None) -> Iterator[list[str]]:
    """A command prefix that runs inside a namespace whose loopback is limited to `rate` (none: as it is)."""
    if rate is None:
        yield []
        return
    ns = f"corral-bench-{os.getpid()}-{rate}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"], check=True)
        # tbf, not netem: this kernel has no sch_netem. Loopback traffic leaves through lo's qdisc once.
        burst = "1mb" if rate == "1gbit" else "256kb"
        tbf = ["tc", "qdisc", "add", "dev", "lo", "root", "tbf", "rate", rate, "burst", burst, "latency", "100ms"]
        subprocess.run(["ip", "netns", "exec", ns, *tbf], check=True)
        yield ["ip", "netns", "exec", ns]
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def run(prefix: list[str], nproc: int, args: list[str]) -> dict[str, Any]:
    """One probe run; rank 0's record."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [*prefix, CORRAL, "run", "--nproc", str(nproc), str(PROBE), str(out), *args]
        env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        return json.loads(out.read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--steps", type=int, default=40)
    args = p.parse_args()
    if shutil.which("ip") is None or shutil.which("tc") is None or os.geteuid() != 0:
        raise SystemExit("error: shaping the link needs root and the ip and tc tools (iproute2)")
    results: dict[str, Any] = {
        "command": "python benchmarks/compression.py " + " ".join(sys.argv[1:]),
        "nproc": args.nproc,
        "cpus": os.cpu_count(),
        "options": {},
    }
    total = len(OPTIONS) * (1 + len(LINKS))
    with Progress(console=console) as progress:
        task = progress.add_task("runs", total=total)
        for name, extra in OPTIONS.items():
            progress.update(task, description=f"{name}: train {args.epochs} epochs")
            full = run([], args.nproc, [*extra, "--epochs", str(args.epochs)])
            progress.advance(task)
            row: dict[str, Any] = {"accuracy": full["accuracy"], "bytes_per_step": full["bytes_per_step"]}
            for link, rate in LINKS.items():
                progress.update(task, description=f"{name}: {args.steps} steps on {link}")
                with shaped(rate) as prefix:
                    timed = run(prefix, args.nproc, [*extra, "--epochs", "100", "--max-steps", str(args.steps)])
                row[f"step_s_{link}"] = timed["step_s"]
                progress.advance(task)
            results["options"][name] = row
    base = results["options"]["fp32"]
    for row in results["options"].values():
        row["bytes_vs_fp32"] = row["bytes_per_step"] / base["bytes_per_step"]
        row["accuracy_vs_fp32_points"] = 100 * (row["accuracy"] - base["accuracy"])
        for link in LINKS:
            row[f"step_vs_fp32_{link}"] = row[f"step_s_{link}"] / base[f"step_s_{link}"]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    show(results)


def show(r: dict[str, Any]) -> None:
    t = Table(title=f"compression vs fp32 DDP ({r['nproc']} workers, digits MLP 64-1024-1024-10)")
    for col in ("option", "MB/step", "x fewer", "accuracy", "ms loopback", "ms 1 Gbit", "ms 100 Mbit", "vs fp32"):
        t.add_column(col)
    for name, row in r["options"].items():
        t.add_row(
            name,
            f"{row['bytes_per_step'] / 2**20:.3f}",
            f"{1 / row['bytes_vs_fp32']:.1f}",
            f"{100 * row['accuracy']:.2f}%",
            f"{row['step_s_loopback'] * 1e3:.1f}",
            f"{row['step_s_1gbit'] * 1e3:.1f}",
            f"{row['step_s_100mbit'] * 1e3:.1f}",
            f"{row['step_vs_fp32_100mbit']:.2f}",
        )
    console.print(t)
    console.print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
