"""Pipeline parallelism measured: efficiency against the bubble bound, auto vs equal balance, memory per rank.

    python benchmarks/pipeline.py [--stages 2] [--steps 30]

Every run is `corral run --nproc N benchmarks/jobs/pipeline_probe.py` on the
same model and global batch (64), median step time over 30 steps after 5 of
warm-up; the one-process run (`ddp`, 1 rank) is the baseline in the same script.

(a) efficiency: an MLP of 8 equal 512-wide layers on P stages with M in
    {P, 2P, 4P} microbatches, gpipe and 1f1b; speed-up over one process
    against the ideal P x M / (M + P - 1) (the bubble bound), and beside it
    the same schedule in plain torch.distributed.pipelining (no corral).
(b) balance: an MLP whose first layers are 8x wider than the rest; `auto`
    (profiled, exact) vs the equal-layer split, same P and M.
(c) memory: parameter + optimizer-state (Adam) bytes per rank, pipeline on
    P = 2 and 4 (equal layer counts: the layers are identical) vs ddp on 2
    ranks (each rank holds the whole model).

Writes benchmarks/results/pipeline.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
PROBE = ROOT / "benchmarks" / "jobs" / "pipeline_probe.py"
RAW = ROOT / "benchmarks" / "jobs" / "pipeline_raw.py"
RESULTS = ROOT / "benchmarks" / "results" / "pipeline.json"
CORRAL = str(Path(sys.executable).parent / "corral")
EVEN = ",".join(["512"] * 9)  # 8 layers of 512 x 512
UNEVEN = ",".join(["2048", "2048", "2048"] + ["256"] * 6)  # 2 wide layers, then 6 narrow ones
console = Console()


def run(nproc: int, args: list[str], steps: int) -> dict[str, Any]:
    """One probe run; the slowest rank's median step time and every rank's record."""
    script = PROBE
    if args[0] == "raw":
        script, args = RAW, args[1:]
    with tempfile.TemporaryDirectory() as out:
        cmd = [CORRAL, "run", "--nproc", str(nproc), str(script), out, "--steps", str(steps), *args]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        ranks = [json.loads(p.read_text()) for p in sorted(Path(out).glob("*.json"))]
    return {"step_s": max(r["step_s"] for r in ranks), "ranks": ranks, "args": args, "nproc": nproc}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stages", type=int, default=2, help="P for (a) and (b); 2 on a 2-core machine")
    p.add_argument("--steps", type=int, default=30)
    args = p.parse_args()
    P, steps = args.stages, args.steps
    plan: list[tuple[str, int, list[str]]] = [("one process, even", 1, ["--widths", EVEN, "--strategy", "ddp"])]
    naive = ",".join(str(8 // P + (1 if i < 8 % P else 0)) for i in range(P))  # equal layer counts
    for schedule in ("gpipe", "1f1b"):
        for m in (P, 2 * P, 4 * P):
            pp = ["--stages", str(P), "--microbatches", str(m), "--schedule", schedule, "--balance", naive]
            plan.append((f"{schedule} M={m}", P, ["--widths", EVEN, *pp]))
            raw = ["raw", "--widths", EVEN, "--microbatches", str(m), "--schedule", schedule]
            plan.append((f"torch {schedule} M={m}", P, raw))
    pp = ["--stages", str(P), "--microbatches", str(2 * P)]
    plan += [
        ("one process, uneven", 1, ["--widths", UNEVEN, "--strategy", "ddp"]),
        ("uneven, equal layers", P, ["--widths", UNEVEN, *pp, "--balance", naive]),
        ("uneven, auto", P, ["--widths", UNEVEN, *pp, "--balance", "auto"]),
        ("memory: ddp x2", 2, ["--widths", EVEN, "--strategy", "ddp"]),
        ("memory: pipeline P=2", 2, ["--widths", EVEN, "--stages", "2", "--balance", "4,4"]),
        ("memory: pipeline P=4", 4, ["--widths", EVEN, "--stages", "4", "--balance", "2,2,2,2", "--steps", "3"]),
    ]  # fmt: skip
    got: dict[str, dict[str, Any]] = {}
    with Progress(console=console) as progress:
        task = progress.add_task("pipeline runs", total=len(plan))
        for label, nproc, extra in plan:
            progress.update(task, description=label)
            got[label] = run(nproc, extra, steps)
            progress.advance(task)

    base = got["one process, even"]["step_s"]
    efficiency = []
    for schedule in ("gpipe", "1f1b"):
        for mb in (P, 2 * P, 4 * P):
            r = got[f"{schedule} M={mb}"]
            bound = P * mb / (mb + P - 1)
            efficiency.append(
                {
                    "schedule": schedule,
                    "microbatches": mb,
                    "step_s": r["step_s"],
                    "speedup": base / r["step_s"],
                    "bubble_bound": bound,
                    "of_bound": base / r["step_s"] / bound,
                    "torch_step_s": got[f"torch {schedule} M={mb}"]["step_s"],
                }
            )
    eq, auto = got["uneven, equal layers"], got["uneven, auto"]
    balance = {
        "one_process_s": got["one process, uneven"]["step_s"],
        "equal_layers": {"split": eq["ranks"][0]["split"], "step_s": eq["step_s"]},
        "auto": {
            "split": auto["ranks"][0]["split"],
            "step_s": auto["step_s"],
            "stage_costs_s": auto["ranks"][0]["stage_costs_s"],
        },
        "auto_vs_equal": auto["step_s"] / eq["step_s"],
    }
    memory = {}
    for label in ("memory: ddp x2", "memory: pipeline P=2", "memory: pipeline P=4"):
        ranks = got[label]["ranks"]
        memory[label.removeprefix("memory: ")] = [r["param_bytes"] + r["optimizer_bytes"] for r in ranks]
    ddp_bytes = max(memory["ddp x2"])
    results = {
        "command": "python benchmarks/pipeline.py " + " ".join(sys.argv[1:]),
        "stages": P,
        "cpus": os.cpu_count(),
        "one_process_step_s": base,
        "efficiency": efficiency,
        "balance": balance,
        "memory_bytes_per_rank": memory,
        "memory_vs_ddp": {k: max(v) / ddp_bytes for k, v in memory.items()},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    show(results)


def show(r: dict[str, Any]) -> None:
    t = Table(
        title=f"(a) pipeline efficiency, P={r['stages']} (one process: {r['one_process_step_s'] * 1e3:.1f} ms/step)"
    )
    for col in ("schedule", "M", "ms/step", "speed-up", "bubble bound", "of bound", "raw torch ms", "corral/torch"):
        t.add_column(col)
    for e in r["efficiency"]:
        t.add_row(e["schedule"], str(e["microbatches"]), f"{e['step_s'] * 1e3:.1f}", f"{e['speedup']:.2f}",
                  f"{e['bubble_bound']:.2f}", f"{e['of_bound']:.2f}", f"{e['torch_step_s'] * 1e3:.1f}",
                  f"{e['step_s'] / e['torch_step_s']:.2f}")  # fmt: skip
    console.print(t)
    b = r["balance"]
    console.print(
        f"(b) uneven model: equal layers {b['equal_layers']['split']} {b['equal_layers']['step_s'] * 1e3:.1f} ms, "
        f"auto {b['auto']['split']} {b['auto']['step_s'] * 1e3:.1f} ms: auto/equal = {b['auto_vs_equal']:.2f}"
    )
    for k, v in r["memory_bytes_per_rank"].items():
        console.print(f"(c) {k}: {[f'{x / 2**20:.2f} MB' for x in v]} ({r['memory_vs_ddp'][k]:.2f} of ddp)")
    console.print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
