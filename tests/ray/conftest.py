"""One fake multi-node Ray cluster per test session: a head without resources and three 2-slot nodes.

Loopback only, tuned health checks (a lost node is seen in ~1.5 s, not ~13 s),
and a temp folder of its own (Ray writes to /tmp/ray otherwise). Nodes carry
a `corral/name` label, which the Ray executor uses as the node's name.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

# Read when ray is imported: without it Ray swaps 127.0.0.1 for the machine's address and connects hang.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
ray = pytest.importorskip("ray", reason="the ray extra is not installed (make test installs it)")

HEALTH = {
    "health_check_period_ms": 1000,
    "health_check_failure_threshold": 2,
    "health_check_timeout_ms": 1000,
    "health_check_initial_delay_ms": 0,
}
NODES = ("n0", "n1", "n2")
SLOTS = 2


@dataclass
class FakeCluster:
    """The session's cluster: its address and its worker nodes by corral name."""

    cluster: Any
    address: str
    nodes: dict[str, Any] = field(default_factory=dict)

    def add(self, name: str, slots: int = SLOTS) -> Any:
        """Add (or bring back) a node called `name` with `slots` slots."""
        node = self.cluster.add_node(
            num_cpus=slots,
            resources={"slot": slots},
            node_ip_address="127.0.0.1",
            labels={"corral/name": name},
        )
        self.nodes[name] = node
        self.cluster.wait_for_nodes()
        return node

    def remove(self, name: str) -> None:
        """Lose node `name` as a machine is lost (no graceful shutdown)."""
        self.cluster.remove_node(self.nodes.pop(name), allow_graceful=False)

    def node_ids(self) -> dict[str, str]:
        """Ray node id -> corral name, for the nodes alive now."""
        return {n.node_id: name for name, n in self.nodes.items()}


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[FakeCluster]:
    """Head (no resources, no dashboard) plus n0, n1, n2 with 2 slots each, on 127.0.0.1."""
    from ray.cluster_utils import Cluster

    tmp = tempfile.mkdtemp(prefix="corral-ray-")
    old_tmp = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = tmp
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 0,
            "include_dashboard": False,
            "node_ip_address": "127.0.0.1",
            "_system_config": HEALTH,
        },
    )
    fake = FakeCluster(cluster, cluster.address)
    try:
        for name in NODES:
            fake.add(name)
        yield fake
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
        if old_tmp is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = old_tmp
        shutil.rmtree(tmp, ignore_errors=True)
