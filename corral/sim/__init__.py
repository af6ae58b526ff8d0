"""Trace-driven simulator over corral.sched: the very policies the service runs, on a simulated cluster.

Modules, one job each (import them directly; this package imports nothing heavy):

- traces: `load_trace(spec) -> list[TraceJob]` (files, pollux:, philly:, gavel:, synthetic:)
- profiles, work: how fast a job progresses under an allocation (the ground truth)
- engine: `simulate(jobs, policy, cluster, config) -> SimResult`, the discrete-event loop
- metrics: JCT, makespan, utilisation, finish-time fairness, time series
- report: report.md, metrics.json and PNG plots
- run, cli: `corral simulate`
"""
