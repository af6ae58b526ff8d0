"""Fails on the first attempt, succeeds on a restart."""

import os
import sys

attempt = int(os.environ["TORCHELASTIC_RESTART_COUNT"])
print(f"attempt {attempt} rank {os.environ['RANK']}")
sys.exit(7 if attempt == 0 and os.environ["RANK"] == "0" else 0)
