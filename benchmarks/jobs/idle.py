"""A job that holds its devices and does nothing for N seconds (benchmarks of the service)."""

import sys
import time

time.sleep(float(sys.argv[1]) if len(sys.argv) > 1 else 600)
