"""Gang restart after a SIGKILLed rank: `corral run` vs `torchrun` on the same script.

    python benchmarks/gang_restart.py [--trials 5] [--nproc 2] [--timeout 90]

Each trial starts benchmarks/jobs/restart_probe.py (plain gloo DDP, no corral
API) on N local ranks with one restart allowed:

    corral run --nproc N --max-restarts 1 restart_probe.py
    torchrun --nproc-per-node N --max-restarts 1 --standalone restart_probe.py

waits until the ranks are stepping, SIGKILLs rank 1's worker process (its pid
comes from the script) and measures the time from the kill to the first
training step of attempt 1 (TORCHELASTIC_RESTART_COUNT=1, from the script's
step log). A trial with no new step within --timeout seconds is a hang
(recorded as null, "hung": true). After each trial the launcher and every
process of the trial are killed. Median of the trials per launcher, and the
ratio corral/torchrun of the medians. Writes benchmarks/results/gang_restart.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import psutil
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
PROBE = ROOT / "benchmarks" / "jobs" / "restart_probe.py"
RESULTS = ROOT / "benchmarks" / "results" / "gang_restart.json"
BIN = Path(sys.executable).parent
WARMUP_STEPS = 20  # steps of attempt 0 before the kill
START_TIMEOUT_S = 120.0


def commands(nproc: int) -> dict[str, list[str]]:
    return {
        "corral": [str(BIN / "corral"), "run", "--nproc", str(nproc), "--max-restarts", "1", str(PROBE)],
        "torchrun": [
            str(BIN / "torchrun"),
            "--nproc-per-node",
            str(nproc),
            "--max-restarts",
            "1",
            "--standalone",
            str(PROBE),
        ],
    }


def steps(d: Path, attempt: int) -> list[tuple[float, int]]:
    """(time, step) of every logged step of `attempt`, over all ranks."""
    rows = []
    for f in d.glob("steps-*"):
        for line in f.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3 and int(parts[1]) == attempt:
                rows.append((float(parts[0]), int(parts[2])))
    return rows


def trial_procs(d: Path) -> list[psutil.Process]:
    """This user's processes started for the trial whose PROBE_DIR is `d` (they all inherit it)."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.pid != os.getpid() and p.environ().get("PROBE_DIR") == str(d):
                found.append(p)
        except (psutil.Error, OSError):
            pass
    return found


def cleanup(launcher: subprocess.Popen[bytes], d: Path) -> None:
    """SIGKILL the launcher's group and every process of the trial (workers run in sessions of their own)."""
    procs = trial_procs(d)
    try:
        os.killpg(launcher.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for p in procs + trial_procs(d):
        try:
            p.kill()
        except psutil.Error:
            pass
    launcher.wait()
    psutil.wait_procs(procs, timeout=10)
    left = trial_procs(d)
    if left:
        raise SystemExit(f"processes left behind: {[p.pid for p in left]}")


def trial(cmd: list[str], timeout: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="gang-restart-") as tmp:
        d = Path(tmp)
        env = dict(os.environ, PROBE_DIR=str(d), OMP_NUM_THREADS="1")
        log = open(d / "launcher.log", "wb")
        launcher = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while not (d / "pid-1-0").exists() or len(steps(d, 0)) < WARMUP_STEPS * 2:
                if launcher.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"{cmd[0]}: the gang did not start:\n{(d / 'launcher.log').read_text()[-2000:]}")
                time.sleep(0.01)
            victim = int((d / "pid-1-0").read_text())
            killed_at = time.time()
            os.kill(victim, signal.SIGKILL)
            end = time.monotonic() + timeout
            while time.monotonic() < end:
                new = steps(d, 1)
                if new:
                    return {"seconds": min(t for t, _ in new) - killed_at, "hung": False}
                time.sleep(0.01)
            return {"seconds": None, "hung": True, "launcher_alive": launcher.poll() is None}
        finally:
            cleanup(launcher, d)
            log.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--timeout", type=float, default=90.0)
    args = p.parse_args()
    if args.nproc < 2:
        raise SystemExit("--nproc must be >= 2 (rank 1 is killed)")
    console = Console()
    results: dict[str, dict] = {}
    for name, cmd in commands(args.nproc).items():
        runs = []
        for i in range(args.trials):
            r = trial(cmd, args.timeout)
            runs.append(r)
            shown = "hung" if r["hung"] else f"{r['seconds']:.2f} s"
            console.print(f"{name} trial {i + 1}/{args.trials}: kill -> first step of attempt 1: {shown}")
        values = [r["seconds"] for r in runs if not r["hung"]]
        results[name] = {
            "command": cmd,
            "trials": runs,
            "seconds": [r["seconds"] for r in runs],
            "median_s": statistics.median(values) if values else None,
            "min_s": min(values) if values else None,
            "max_s": max(values) if values else None,
            "hangs": sum(r["hung"] for r in runs),
        }
    c, t = results["corral"]["median_s"], results["torchrun"]["median_s"]
    ratio = c / t if c is not None and t is not None else None

    table = Table(title=f"gang restart after SIGKILL of rank 1 ({args.nproc} gloo ranks, {args.trials} trials)")
    for col in ("launcher", "median kill -> new step", "min", "max", "hangs", "ratio corral/torchrun"):
        table.add_column(col)

    def s(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f} s"

    for name, r in results.items():
        table.add_row(
            name,
            s(r["median_s"]),
            s(r["min_s"]),
            s(r["max_s"]),
            f"{r['hangs']}/{args.trials}",
            (f"{ratio:.3f}" if ratio is not None else "-") if name == "corral" else "",
        )
    console.print(table)

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": "gang_restart",
        "measure": "seconds from SIGKILL of rank 1 to the first training step of attempt 1 (median of trials)",
        "nproc": args.nproc,
        "trials": args.trials,
        "timeout_s": args.timeout,
        "cpu_count": os.cpu_count(),
        "torch": version("torch"),
        "command": " ".join(["OMP_NUM_THREADS=1 python benchmarks/gang_restart.py", *sys.argv[1:]]),
        "launchers": results,
        "ratio_corral_torchrun": ratio,
    }
    RESULTS.write_text(json.dumps(payload, indent=2) + "\n")
    console.print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
