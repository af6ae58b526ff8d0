"""Fails (exit 7) the first time it runs for a job, succeeds afterwards: a marker in the checkpoint dir remembers."""

import os
import sys
from pathlib import Path

marker = Path(os.environ.get("CORRAL_CHECKPOINT_DIR", ".")) / "ran-once"
if os.environ.get("RANK", "0") == "0" and not marker.exists():
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text("x")
    print("first run: failing on purpose")
    sys.exit(7)
print("second run: fine")
