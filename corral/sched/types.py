"""Value types of the scheduling contract: what a policy sees and what it returns.

The simulator (corral.sim) and the live service (corral.control) both build
these snapshots and call the same policy objects, so a policy evaluated in
simulation is the policy that runs. Everything here is an immutable value:
no I/O, no clocks, no threads.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover - import only for annotations
    from corral.goodput import GoodputModel


@dataclass(frozen=True)
class Allocation:
    """Devices a job holds: node name -> sorted device ids on that node."""

    slots: tuple[tuple[str, tuple[int, ...]], ...] = ()

    @classmethod
    def of(cls, mapping: Mapping[str, Iterable[int]]) -> Allocation:
        """Build an allocation from a node -> device ids mapping (empty nodes dropped)."""
        slots = tuple((node, tuple(sorted(int(d) for d in devs))) for node, devs in sorted(mapping.items()))
        return cls(tuple((n, d) for n, d in slots if d))

    @cached_property
    def num_devices(self) -> int:
        """Total number of devices held (computed once: every round asks)."""
        return sum(len(d) for _, d in self.slots)

    @property
    def num_nodes(self) -> int:
        """Number of distinct nodes the allocation spans."""
        return len(self.slots)

    @property
    def nodes(self) -> tuple[str, ...]:
        """Node names, sorted."""
        return tuple(n for n, _ in self.slots)

    def devices(self) -> Iterator[tuple[str, int]]:
        """Every (node, device id) pair held."""
        for node, devs in self.slots:
            for d in devs:
                yield node, d

    def per_node(self) -> tuple[int, ...]:
        """Devices per node, largest first (the shape the throughput model uses)."""
        return tuple(sorted((len(d) for _, d in self.slots), reverse=True))

    def as_dict(self) -> dict[str, list[int]]:
        """A JSON-friendly node -> device ids mapping."""
        return {n: list(d) for n, d in self.slots}

    def __bool__(self) -> bool:
        return bool(self.slots)

    def __len__(self) -> int:
        return self.num_devices


EMPTY = Allocation()


@dataclass(frozen=True)
class Node:
    """One machine: a name, how many accelerators it has, and free-form labels."""

    name: str
    num_devices: int
    labels: Mapping[str, str] = field(default_factory=dict, hash=False, compare=False)

    @property
    def rack(self) -> str:
        """The node's rack label (the node itself when unlabelled)."""
        return self.labels.get("rack", self.name)

    @property
    def device_type(self) -> str:
        """The accelerator type label ("gpu" when unlabelled)."""
        return self.labels.get("type", "gpu")


@dataclass(frozen=True)
class ClusterView:
    """The nodes of the cluster; which devices are used follows from the jobs' allocations."""

    nodes: tuple[Node, ...]

    @classmethod
    def uniform(cls, num_nodes: int, devices_per_node: int, **labels: str) -> ClusterView:
        """A homogeneous cluster of `num_nodes` x `devices_per_node`."""
        return cls(tuple(Node(f"n{i}", devices_per_node, dict(labels)) for i in range(num_nodes)))

    @cached_property
    def total_devices(self) -> int:
        """Number of devices in the cluster (computed once)."""
        return sum(n.num_devices for n in self.nodes)

    @cached_property
    def sizes(self) -> dict[str, int]:
        """Node name -> number of devices (computed once and shared: do not modify it)."""
        return {n.name: n.num_devices for n in self.nodes}

    def node(self, name: str) -> Node:
        """The node called `name` (KeyError if absent)."""
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def free_devices(self, allocations: Iterable[Allocation]) -> dict[str, list[int]]:
        """Node -> device ids not held by any of `allocations`."""
        used: dict[str, set[int]] = {}
        for alloc in allocations:
            for node, dev in alloc.devices():
                used.setdefault(node, set()).add(dev)
        return {n.name: [d for d in range(n.num_devices) if d not in used.get(n.name, ())] for n in self.nodes}


@dataclass(frozen=True)
class JobView:
    """What a policy may know about one active (pending or running) job."""

    id: str
    user: str = "default"
    priority: int = 0
    submit_time: float = 0.0
    min_gpus: int = 1
    max_gpus: int = 1  # rigid job: min_gpus == max_gpus
    gpus: int | None = None  # requested count; None means max_gpus
    attained_service: float = 0.0  # device-seconds received so far
    progress: float | None = None  # fraction of the work done, if known
    duration_estimate: float | None = None  # run time alone at `requested` devices, if known
    throughput: GoodputModel | None = None  # fitted from reported step times
    allocation: Allocation = EMPTY  # what it holds now
    run_time: float = 0.0  # wall-clock seconds spent running so far (any allocation)
    restarts: int = 0  # times it was preempted, resized or restarted
    preemptible: bool = True
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def requested(self) -> int:
        """Devices the job asked for (the count a rigid policy gives it)."""
        return self.gpus if self.gpus is not None else self.max_gpus

    @property
    def is_running(self) -> bool:
        """True when the job holds devices now."""
        return bool(self.allocation)

    @property
    def elastic(self) -> bool:
        """True when the job accepts a range of device counts."""
        return self.min_gpus < self.max_gpus

    def remaining_estimate(self) -> float | None:
        """Seconds left at `requested` devices, from the estimate and the progress (None if unknown)."""
        if self.duration_estimate is None:
            return None
        if self.progress is not None:
            return max(0.0, self.duration_estimate * (1.0 - self.progress))
        done = self.attained_service / max(1, self.requested)
        return max(0.0, self.duration_estimate - done)


@dataclass(frozen=True)
class Decision:
    """A policy's answer: job id -> allocation; jobs absent get none. `reasons` says why a job waits."""

    allocations: Mapping[str, Allocation] = field(default_factory=dict)
    reasons: Mapping[str, str] = field(default_factory=dict)

    def allocation(self, job_id: str) -> Allocation:
        """The allocation of `job_id` (empty when it gets none)."""
        return self.allocations.get(job_id, EMPTY)


# Reasons a pending job waits, shown like squeue's reason column.
REASON_RESOURCES = "Resources"  # not enough free devices
REASON_PRIORITY = "Priority"  # a job ahead in the policy's order holds the devices
REASON_UNSCHEDULABLE = "Unschedulable"  # can never fit this cluster


@runtime_checkable
class Policy(Protocol):
    """A scheduling policy: a pure function of (now, jobs, cluster) to a Decision."""

    # A read-only member, so that a class attribute (`name = "fifo"`) satisfies it.
    @property
    def name(self) -> str:
        """The registered name of the policy."""
        ...

    def schedule(self, now: float, jobs: tuple[JobView, ...] | list[JobView], cluster: ClusterView) -> Decision:
        """Decide every active job's allocation for the next round."""
        ...


@runtime_checkable
class Placer(Protocol):
    """Maps device counts to concrete devices on nodes (topology-aware placement)."""

    name: str

    def place(
        self,
        demands: Mapping[str, int],
        cluster: ClusterView,
        keep: Mapping[str, Allocation] | None = None,
    ) -> dict[str, Allocation]:
        """Give each job id in `demands` (in order) that many devices.

        `keep` are current allocations to preserve when the count is unchanged. Jobs that do not fit are absent."""
        ...
