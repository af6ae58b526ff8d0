"""Inside a training job: the launcher (`corral run`), the Job API, data partitioning, checkpoints, strategies.

Import the modules directly; this package imports nothing (the Job API pulls
in torch, which the CLI and the service must not pay for).
"""
