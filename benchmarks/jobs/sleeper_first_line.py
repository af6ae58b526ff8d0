"""The job of benchmarks/vs_slurm.py: note the time it started, print a first line, then sleep.

    python sleeper_first_line.py OUT_FILE [SECONDS]

The first statement after the interpreter's start: time.time() and the pid go
to OUT_FILE (written then renamed, so a reader never sees half of it), then a
first line on stdout, then a sleep of SECONDS (default 600). Standard library
only, so both Slurm and corral start exactly the same thing.
"""

import time

T0 = time.time()

import os  # noqa: E402
import sys  # noqa: E402

out = sys.argv[1] if len(sys.argv) > 1 else ""
if out and out != "-":
    tmp = f"{out}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{T0!r} {os.getpid()}\n")
    os.replace(tmp, out)
print(f"first line at {T0:.6f}", flush=True)
time.sleep(float(sys.argv[2]) if len(sys.argv) > 2 else 600)
