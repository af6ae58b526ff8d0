"""Pure scheduling: job/cluster types, policies, placement, throughput model. No I/O."""

from corral.sched.types import (
    EMPTY,
    Allocation,
    ClusterView,
    Decision,
    JobView,
    Node,
    Placer,
    Policy,
)

__all__ = ["EMPTY", "Allocation", "ClusterView", "Decision", "JobView", "Node", "Placer", "Policy"]
