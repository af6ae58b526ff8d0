"""What rank 0 reports to the service about the job's speed: step time, samples/s, progress, configuration."""

from __future__ import annotations

import time

# Rank 0 reports step time, samples/s and progress to the service about this often
# (seconds of training, timed locally: no collective).
REPORT_PERIOD_S = 2.0


class ReportWindow:
    """The optimizer steps and samples since the last report, and when the next one is due."""

    def __init__(self) -> None:
        self.reset(0, 0)

    def reset(self, step: int, samples: int) -> None:
        """Start a new window at optimizer step `step` with `samples` samples trained so far."""
        self.started = time.perf_counter()
        self.due = self.started + REPORT_PERIOD_S
        self.step = step
        self.samples = samples

    def rates(self, step: int, samples: int, last_boundary: float) -> dict[str, float]:
        """step_time and samples_per_s over the window, up to the last optimizer step (`last_boundary`)."""
        steps = step - self.step
        elapsed = last_boundary - self.started
        if steps <= 0 or elapsed <= 0:
            return {}
        return {"step_time": elapsed / steps, "samples_per_s": (samples - self.samples) / elapsed}
