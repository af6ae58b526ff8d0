"""Prints N numbered lines, a few milliseconds apart (a job whose log is followed)."""

import sys
import time

for i in range(int(sys.argv[1]) if len(sys.argv) > 1 else 100):
    print("line", i, flush=True)
    time.sleep(0.003)
