"""Rank 1 exits with code 3 after a moment; the others would run for minutes."""

import os
import sys
import time

rank = int(os.environ["RANK"])
print(f"up {rank}", flush=True)
if rank == 1:
    time.sleep(0.5)
    sys.exit(3)
time.sleep(300)
