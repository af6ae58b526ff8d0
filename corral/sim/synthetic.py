"""Synthetic traces: Poisson arrivals, heavy-tailed durations, mostly 1-GPU jobs (Philly-shaped)."""

from __future__ import annotations

import numpy as np

from corral.sim.tracejob import TraceJob

# GPU demands and their probabilities, shaped like Philly (93% of its jobs use
# one GPU; multi-GPU jobs carry most of the GPU time), a little heavier so that
# placement and gang scheduling matter.
GPU_CHOICES = (1, 2, 4, 8, 16)
GPU_PROBS = (0.80, 0.08, 0.07, 0.04, 0.01)
# Lognormal durations with Philly's median (about 19 minutes); sigma 1.8 gives
# a mean several times the median and a p99 of a few days, clipped to [60 s, 7 d].
MEDIAN_S = 1144.0
SIGMA = 1.8
MIN_S, MAX_S = 60.0, 7 * 86400.0
USERS = 16
LOAD = 0.7  # offered load: requested device-seconds / (devices x arrival span)


def synthetic_trace(n: int, *, seed: int = 0, devices: int = 64, load: float = LOAD) -> list[TraceJob]:
    """N jobs whose offered load on `devices` devices is about `load`; deterministic for a seed."""
    rng = np.random.default_rng(seed)
    choices = [g for g in GPU_CHOICES if g <= max(1, devices)]
    probs = np.array(GPU_PROBS[: len(choices)])
    gpus = rng.choice(choices, size=n, p=probs / probs.sum())
    duration = np.clip(rng.lognormal(np.log(MEDIAN_S), SIGMA, size=n), MIN_S, MAX_S).round(1)
    # Arrival rate chosen so the trace keeps `devices` about `load` busy.
    span = float(np.sum(gpus * duration)) / (load * max(1, devices))
    gaps = rng.exponential(span / n, size=n)
    submit = np.cumsum(gaps).round(1) - round(float(gaps[0]), 1)
    # A few heavy users and many light ones (Zipf-like), priorities mostly 0.
    weights = 1.0 / np.arange(1, USERS + 1)
    user = rng.choice(USERS, size=n, p=weights / weights.sum())
    priority = rng.choice(3, size=n, p=[0.8, 0.15, 0.05])
    width = len(str(n - 1))
    return [
        TraceJob(
            id=f"job-{i:0{width}d}",
            submit_time=float(submit[i]),
            duration=float(duration[i]),
            gpus=int(gpus[i]),
            priority=int(priority[i]),
            user=f"user{int(user[i])}",
        )
        for i in range(n)
    ]
