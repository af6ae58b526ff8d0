"""Every rank prints that it is up, then sleeps for minutes (a job to cancel or to kill)."""

import os
import time

print(f"up {os.environ.get('RANK', '0')}", flush=True)
time.sleep(300)
