"""The Ray executor: each run is a gang of rank actors in one placement group on a Ray cluster.

corral keeps its queue, policies and store; Ray gives it nodes, resources,
placement and failure detection. The cluster the policy sees is Ray's alive
nodes that have GPUs (or, on a CPU-only cluster, a `slot` custom resource).
A run's allocation becomes one placement group with one bundle per rank,
each bundle pinned to its node by the node-id label, and one named, detached
`RankActor` per rank that runs the entrypoint with torchrun's variables.

A monitor thread watches every gang: on the first rank that fails, dies or
loses its node, the whole gang is killed at once (never left to gloo's
timeout). What each rank printed is copied into the service's home, so
`corral logs` works while the job runs and after. State that must outlive
the service (exit codes, stop deadlines) lives in the actors: a restarted
service finds them by name and adopts the gang.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corral.control.executors.base import Ending, RunHandle, RunOutcome
from corral.control.executors.logs import HomeLogs
from corral.errors import UserError
from corral.runtime import env as runtime_env
from corral.runtime.launch import entrypoint_args
from corral.sched.types import Allocation, ClusterView, Node

log = logging.getLogger("corral.executor.ray")

NAMESPACE = "corral"
SLOT = "slot"  # the custom resource that stands for a device on CPU-only clusters
NAME_LABEL = "corral/name"  # a node label that names the node for corral (else ray-<id prefix>)
MONITOR_S = 0.2  # how often the monitor looks at the gangs
NODES_S = 1.0  # how often the node list is read from Ray's control store
LOGS_S = 0.5  # how often rank output is copied into the service's home
PING_S = 2.0  # a rank actor that does not answer within this is on a lost node
ESCALATE_S = 2.0  # after the grace, SIGKILL; the run is KILLED
SUSPECT_S = 60.0  # the longest a node whose rank actor died is left out before it is trusted again
PYTHON = "<python>"  # in a rank's command: the python the rank's actor runs on


def _ray() -> Any:
    """The ray module, or one line on how to install it."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
    except ImportError:
        raise UserError(
            "the ray executor needs Ray, which is not installed: pip install 'corral[ray]' (or 'ray[default]')"
        ) from None
    return ray


def _alive() -> bool:
    """A task pinned to a suspect node: that it ran at all says the node is alive."""
    return True


def _check_reachable(address: str) -> None:
    """Refuse a HOST:PORT nobody listens on, in seconds rather than Ray's minute of retries."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise UserError(f"--ray-address must be auto or HOST:PORT, got {address!r}")
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=3):
            pass
    except OSError as exc:
        raise UserError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from None


def actor_name(job_id: int, attempt: int, rank: int) -> str:
    """The name of a rank's actor (in namespace `corral`): how a restarted service finds it."""
    return f"corral-{job_id}-{attempt}-r{rank}"


def group_name(job_id: int, attempt: int) -> str:
    """The name of a run's placement group."""
    return f"corral-{job_id}-{attempt}"


@dataclass
class _RayNode:
    name: str
    node_id: str
    devices: int
    kind: str  # "GPU" or SLOT
    cpus: float
    labels: dict[str, str]


@dataclass
class _Gang:
    handle: RunHandle
    world: int
    actors: list[Any]  # None where the actor is gone
    node_ids: list[str]  # the node each rank was pinned to
    node_names: list[str]
    group: Any = None  # the placement group
    ready_ref: Any = None  # pg.ready() while it is not placed yet
    placed_by: float = 0.0  # wall clock: not placed by then -> UNPLACED
    waits: dict[int, Any] = field(default_factory=dict)  # rank -> ObjectRef of actor.wait()
    status: dict[int, dict[str, Any]] = field(default_factory=dict)  # rank -> its end
    dead: dict[int, str] = field(default_factory=dict)  # rank -> why its actor is gone
    kill_at: float | None = None
    hard_kill_at: float | None = None
    stop_asked: bool = False
    forced: bool = False
    preempt_by: float | None = None  # one rank saved and left: the others get until then
    outcome: RunOutcome | None = None
    offsets: list[int] = field(default_factory=list)  # bytes of each rank's output copied so far
    partial: list[bytes] = field(default_factory=list)  # a rank's unfinished last line (for the merged log)
    next_logs: float = 0.0


class RayExecutor(HomeLogs):
    """Runs each job as a gang of rank actors in a placement group on a Ray cluster."""

    name = "ray"

    def __init__(
        self,
        home: Path,
        *,
        address: str = "auto",
        checkpoint_root: Path | None = None,
        placement_timeout: float = 30.0,
        cpus_per_rank: float = 1.0,
        monitor: bool = True,
    ) -> None:
        if placement_timeout <= 0:
            raise UserError(f"--placement-timeout must be > 0 seconds, got {placement_timeout}")
        self.ray = _ray()
        self.home = Path(home)
        self.checkpoint_root = Path(checkpoint_root) if checkpoint_root else self.home / "jobs"
        self.placement_timeout = placement_timeout
        self.cpus_per_rank = cpus_per_rank
        if address != "auto":
            _check_reachable(address)
        try:
            self.ray.init(
                address=address,
                namespace=NAMESPACE,
                ignore_reinit_error=True,
                log_to_driver=False,
                logging_level=logging.WARNING,
                configure_logging=False,
            )
        except ConnectionError as exc:
            raise UserError(f"cannot connect to the Ray cluster at {address}: {exc}") from None
        self.gangs: dict[int, _Gang] = {}
        self.lock = threading.RLock()
        self._nodes: list[_RayNode] = []
        self._dead_nodes: set[str] = set()
        # Node id -> (probe ref, trusted-again-at): nodes where a rank actor died and Ray has not yet
        # said whether the node itself is gone. Actors on a lost node die seconds before its health
        # check fails; placing there again would only wait for the placement timeout.
        self._suspect: dict[str, tuple[Any, float]] = {}
        self._nodes_at = 0.0
        self._attention = threading.Event()
        self._stop = threading.Event()
        self._refresh_nodes()
        self._thread: threading.Thread | None = None
        if monitor:
            self._thread = threading.Thread(target=self._monitor, name="corral-ray-monitor", daemon=True)
            self._thread.start()

    # -- the cluster -------------------------------------------------------------------

    def _refresh_nodes(self) -> None:
        nodes, dead = [], set()
        for info in self.ray.nodes():
            res = info.get("Resources", {})
            labels = {k: str(v) for k, v in (info.get("Labels") or {}).items()}
            if not info.get("Alive"):
                dead.add(info["NodeID"])
                continue
            gpus, slots = int(res.get("GPU", 0)), int(res.get(SLOT, 0))
            if not gpus and not slots:
                continue  # a head without devices, or a CPU-only worker: nothing to hand out
            name = labels.get(NAME_LABEL) or f"ray-{info['NodeID'][:8]}"
            shown = {k: v for k, v in labels.items() if not k.startswith("ray.io/") and k != NAME_LABEL}
            shown.setdefault("type", "gpu" if gpus else SLOT)
            shown["ray_node_id"] = info["NodeID"]
            nodes.append(
                _RayNode(name, info["NodeID"], gpus or slots, "GPU" if gpus else SLOT, float(res.get("CPU", 0)), shown)
            )
        nodes.sort(key=lambda n: n.name)
        self._nodes, self._dead_nodes, self._nodes_at = nodes, dead, time.monotonic()
        self._settle_suspects()

    def _suspect_node(self, node_id: str) -> None:
        """Leave `node_id` out of the cluster until a task pinned to it runs (alive) or Ray marks it dead."""
        if node_id in self._suspect or node_id in self._dead_nodes:
            return
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        probe = (
            self.ray.remote(_alive)
            .options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False), num_cpus=0)
            .remote()
        )
        self._suspect[node_id] = (probe, time.monotonic() + SUSPECT_S)

    def _settle_suspects(self) -> None:
        """Trust a suspect node again once its probe ran; forget it once Ray marks it dead."""
        for node_id, (probe, until) in list(self._suspect.items()):
            ready, _ = self.ray.wait([probe], timeout=0)
            if node_id in self._dead_nodes or ready or time.monotonic() >= until:
                del self._suspect[node_id]

    def _refresh_if_stale(self) -> None:
        if time.monotonic() - self._nodes_at > NODES_S:
            with self.lock:
                self._refresh_nodes()

    def cluster(self) -> ClusterView:
        """Ray's alive nodes with GPUs (or `slot`s), named by their `corral/name` label or node id."""
        self._refresh_if_stale()
        return ClusterView(
            tuple(Node(n.name, n.devices, n.labels) for n in self._nodes if n.node_id not in self._suspect)
        )

    def _node(self, name: str) -> _RayNode:
        for n in self._nodes:
            if n.name == name:
                return n
        raise RuntimeError(f"node {name} is not in the Ray cluster (any more)")

    # -- where things live ------------------------------------------------------------

    def checkpoint_location(self, job_id: int) -> str:
        """The job's CORRAL_CHECKPOINT_DIR under the checkpoint root (a path every node must reach)."""
        return str(self.checkpoint_root / str(job_id) / "checkpoint")

    def log_tail(self, job_id: int, lines: int = 5) -> str:
        """The last `lines` lines of the job's merged output, with what its ranks printed until now."""
        with self.lock:
            gang = self.gangs.get(job_id)
            if gang is not None:
                self._copy_logs(gang)
        return super().log_tail(job_id, lines)

    def _say(self, job_id: int, text: str) -> None:
        self.log_dir(job_id).mkdir(parents=True, exist_ok=True)
        with open(self.job_dir(job_id) / "launcher.log", "ab") as f:
            f.write(f"[corral] {text}\n".encode())

    # -- starting ---------------------------------------------------------------------

    def start(
        self,
        job_id: int,
        attempt: int,
        argv: list[str],
        allocation: Allocation,
        *,
        env: dict[str, str],
        workdir: str | None,
    ) -> RunHandle:
        """Create the run's placement group and rank actors and launch every rank; returns at once."""
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from corral.control.executors.rank_actor import RankActor

        cmd = worker_command(argv)
        self._refresh_if_stale()
        with self.lock:
            nodes = [self._node(name) for name, _ in allocation.slots]
        # Ranks in node order, as torchrun numbers them: node i's ranks follow node i-1's.
        ranks: list[tuple[_RayNode, int, int, int]] = []  # (node, device id, local rank, group rank)
        for group_rank, (node, (_, devices)) in enumerate(zip(nodes, allocation.slots)):
            for local, device in enumerate(devices):
                ranks.append((node, device, local, group_rank))
        world = len(ranks)
        bundles, selectors = [], []
        for node, _, _, _ in ranks:
            bundle = {node.kind: 1.0}
            if self.cpus_per_rank and node.cpus >= self.cpus_per_rank:
                bundle["CPU"] = self.cpus_per_rank
            bundles.append(bundle)
            selectors.append({"ray.io/node-id": node.node_id})
        self.log_dir(job_id).mkdir(parents=True, exist_ok=True)
        where = ", ".join(f"{n.name}:{list(d)}" for n, (_, d) in zip(nodes, allocation.slots))
        self._say(job_id, f"--- run {attempt} on {where}: {shlex.join(argv)}")
        group = placement_group(
            bundles,
            strategy="PACK",
            name=group_name(job_id, attempt),
            lifetime="detached",
            bundle_label_selector=selectors,
        )
        actors: list[Any] = []
        try:
            per_node = {n.name: len(d) for n, (_, d) in zip(nodes, allocation.slots)}
            for rank, (node, _device, _local, _) in enumerate(ranks):
                opts: dict[str, Any] = {
                    "name": actor_name(job_id, attempt, rank),
                    "namespace": NAMESPACE,
                    "lifetime": "detached",
                    "max_concurrency": 8,  # wait() blocks; signal/read/ping answer beside it
                    "num_cpus": bundles[rank].get("CPU", 0),
                    "scheduling_strategy": PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=rank),
                }
                if node.kind == "GPU":
                    opts["num_gpus"] = 1
                else:
                    opts["resources"] = {SLOT: 1}
                actors.append(self.ray.remote(RankActor).options(**opts).remote(job_id, attempt, rank))
            # Rank 0's node and a free port there; the other ranks' launch waits for this ref.
            master = actors[0].rendezvous.remote()
            waits = {}
            for rank, ((node, device, local, group_rank), actor) in enumerate(zip(ranks, actors)):
                rank_env = {
                    **env,
                    **runtime_env.worker_env(
                        rank_=rank,
                        world_size_=world,
                        master_addr="",  # set by the actor from `master`
                        master_port=0,
                        restart_count_=max(0, attempt - 1),
                        max_restarts=0,
                        run_id=group_name(job_id, attempt),
                        local_rank_=local,
                        local_world_size_=per_node[node.name],
                        group_rank=group_rank,
                        group_world_size=len(nodes),
                    ),
                    # No agent hosts the store here: rank 0 does, as under a plain env:// init.
                    "TORCHELASTIC_USE_AGENT_STORE": "False",
                    "CUDA_VISIBLE_DEVICES": str(device),
                    runtime_env.CHECKPOINT_DIR: self.checkpoint_location(job_id),
                    runtime_env.JOB_ID: str(job_id),
                    "CORRAL_NODE": node.name,
                    "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "1"),
                    "PYTHONUNBUFFERED": "1",
                }
                actor.launch.remote(cmd, rank_env, workdir, master)
                waits[rank] = actor.wait.remote()
        except Exception:
            for actor in actors:
                self.ray.kill(actor, no_restart=True)
            self.ray.util.remove_placement_group(group)
            raise
        handle = RunHandle(job_id, attempt, f"ray:{world}")
        gang = _Gang(
            handle,
            world,
            actors,
            [n.node_id for n, *_ in ranks],
            [n.name for n, *_ in ranks],
            group=group,
            ready_ref=group.ready(),
            placed_by=time.time() + self.placement_timeout,
            waits=waits,
            offsets=[0] * world,
            partial=[b""] * world,
        )
        with self.lock:
            self.gangs[job_id] = gang
        return handle

    # -- stopping ---------------------------------------------------------------------

    def stop(self, handle: RunHandle, grace: float) -> None:
        """SIGTERM every rank (checkpoint and exit 75); SIGKILL them once `grace` has passed. Idempotent."""
        with self.lock:
            gang = self._gang(handle)
            if gang is None or gang.outcome is not None or gang.stop_asked:
                return
            gang.stop_asked = True
            deadline = time.time() + grace
            gang.kill_at = deadline
            self._signal_all(gang, signal.SIGTERM, deadline)

    def _signal_all(self, gang: _Gang, sig: int, deadline: float | None = None) -> None:
        for rank, actor in enumerate(gang.actors):
            if actor is not None and rank not in gang.dead:
                actor.signal.remote(sig, deadline)

    # -- watching ---------------------------------------------------------------------

    def _monitor(self) -> None:
        while not self._stop.wait(MONITOR_S):
            try:
                self._refresh_if_stale()
                with self.lock:
                    for gang in list(self.gangs.values()):
                        if gang.outcome is None:
                            self._check(gang)
                        if gang.outcome is None and time.monotonic() >= gang.next_logs:
                            self._copy_logs(gang)
            except Exception:  # the monitor must outlive one bad look at Ray
                log.exception("ray executor: monitoring failed")

    def _check(self, gang: _Gang) -> None:
        """Look at one gang: placed yet, which ranks ended, what to do about it."""
        ray = self.ray
        now = time.time()
        if gang.ready_ref is not None:
            ready, _ = ray.wait([gang.ready_ref], timeout=0)
            if ready:
                gang.ready_ref = None
            elif now >= gang.placed_by:
                self._kill(gang)
                self._end(gang, Ending.UNPLACED, None, f"placement group not placed in {self.placement_timeout:g} s")
                return
            else:
                return
        pending = [ref for rank, ref in gang.waits.items() if rank not in gang.status and rank not in gang.dead]
        if pending:
            ready, _ = ray.wait(pending, num_returns=len(pending), timeout=0)
            by_ref = {ref: rank for rank, ref in gang.waits.items()}
            for ref in ready:
                rank = by_ref[ref]
                try:
                    gang.status[rank] = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    gang.dead[rank] = type(exc).__name__
        if gang.dead:
            self._refresh_nodes()  # an actor died: read Ray's verdict on its node now, not in NODES_S
        lost_nodes = {gang.node_names[r] for r, nid in enumerate(gang.node_ids) if nid in self._dead_nodes}
        if lost_nodes or gang.dead:
            self._kill(gang)
            what = f"node {', '.join(sorted(lost_nodes))} lost" if lost_nodes else ""
            if gang.dead and not what:
                ranks = sorted(gang.dead)
                where = sorted({gang.node_names[r] for r in ranks})
                for r in ranks:
                    self._suspect_node(gang.node_ids[r])
                what = (
                    f"the actor of rank {', '.join(map(str, ranks))} on node {', '.join(where)} died "
                    f"({next(iter(gang.dead.values()))}); the node is left out until Ray says it is alive"
                )
            self._end(gang, Ending.LOST, None, what)
            return
        codes = {r: s["code"] for r, s in gang.status.items()}
        failed = {r: c for r, c in codes.items() if c not in (0, runtime_env.PREEMPTED_EXIT_CODE)}
        if failed and not gang.stop_asked:
            # Kill the others now, then tell a rank that failed by itself from one whose node went away.
            self._kill(gang)
            gone = self._unreachable(gang)
            if gone:
                where = sorted({gang.node_names[r] for r in gone})
                for r in gone:
                    self._suspect_node(gang.node_ids[r])
                self._end(
                    gang,
                    Ending.LOST,
                    None,
                    f"rank {', '.join(map(str, gone))} on node {', '.join(where)} unreachable (node lost)",
                )
                return
            first = min(failed, key=lambda r: gang.status[r].get("ended_at") or now)
            self._say(gang.handle.job_id, f"rank {first} failed (exit code {failed[first]}); the gang was stopped")
            error = self._recorded_error(gang, first)
            self._end(gang, Ending.FAILED, failed[first], f"rank {first} exit code {failed[first]}{error}")
            return
        if runtime_env.PREEMPTED_EXIT_CODE in codes.values() and len(codes) < gang.world and gang.preempt_by is None:
            # One rank saved and left: its peers agreed to stop at the same step (the Job API's vote).
            gang.preempt_by = now + max(gang.kill_at - now if gang.kill_at else 0.0, 1.0)
        if len(codes) == gang.world:
            self._finished(gang, codes)
            return
        if gang.preempt_by is not None and now >= gang.preempt_by:
            self._signal_all(gang, signal.SIGKILL)
            gang.preempt_by = float("inf")
        if gang.kill_at is not None and now >= gang.kill_at:
            self._signal_all(gang, signal.SIGTERM)  # the Job API takes a second SIGTERM as "now"
            gang.kill_at, gang.hard_kill_at, gang.forced = None, now + ESCALATE_S, True
        elif gang.hard_kill_at is not None and now >= gang.hard_kill_at:
            self._signal_all(gang, signal.SIGKILL)
            gang.hard_kill_at = None

    def _finished(self, gang: _Gang, codes: dict[int, int]) -> None:
        values = list(codes.values())
        if all(c == 0 for c in values):
            self._end(gang, Ending.SUCCEEDED, 0)
        elif runtime_env.PREEMPTED_EXIT_CODE in values:
            self._end(gang, Ending.PREEMPTED, runtime_env.PREEMPTED_EXIT_CODE)
        else:
            worst = next(c for c in values if c != 0)
            if gang.forced:
                self._end(gang, Ending.KILLED, worst, "killed after the stop grace ran out")
            elif gang.stop_asked and worst in (128 + signal.SIGTERM, 128 + signal.SIGKILL):
                self._end(gang, Ending.KILLED, worst, "ended by the stop's SIGTERM, no checkpoint saved")
            else:
                rank = next(r for r, c in codes.items() if c == worst)
                self._end(gang, Ending.FAILED, worst, f"rank {rank} exit code {worst}")

    def _unreachable(self, gang: _Gang) -> list[int]:
        """Ranks whose actor does not answer a ping within PING_S (their node is gone)."""
        ray = self.ray
        refs = {r: a.ping.remote() for r, a in enumerate(gang.actors) if a is not None}
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=PING_S)
        gone = []
        for rank, ref in refs.items():
            if ref not in ready:
                gone.append(rank)
                continue
            try:
                ray.get(ref)
            except ray.exceptions.RayError:
                gone.append(rank)
        return gone

    def _recorded_error(self, gang: _Gang, rank: int) -> str:
        try:
            text = self.ray.get(gang.actors[rank].error.remote(), timeout=PING_S)
        except Exception:
            return ""
        if not text:
            return ""
        import json

        try:
            message = json.loads(text)["message"]
            if isinstance(message, dict):
                message = message.get("message", "")
        except (ValueError, KeyError, TypeError):
            return ""
        first = str(message).strip().splitlines()
        return f": {first[-1]}" if first else ""

    def _kill(self, gang: _Gang) -> None:
        """SIGKILL every rank still running (the actors stay until release, holding their exit codes)."""
        self._signal_all(gang, signal.SIGKILL)

    def _end(self, gang: _Gang, ending: Ending, code: int | None, detail: str = "") -> None:
        gang.outcome = RunOutcome(gang.handle, ending, code, detail)
        if gang.ready_ref is None:
            self._copy_logs(gang)
        if ending not in (Ending.SUCCEEDED, Ending.PREEMPTED):
            self._say(gang.handle.job_id, f"run {gang.handle.attempt} {ending.value}: {detail or code}")
        self._attention.set()

    def _copy_logs(self, gang: _Gang) -> None:
        """Append what each rank printed since the last copy to its log and the merged, prefixed log."""
        gang.next_logs = time.monotonic() + LOGS_S
        refs = {}
        for rank, actor in enumerate(gang.actors):
            if actor is not None and rank not in gang.dead:
                refs[rank] = actor.read.remote(gang.offsets[rank])
        if not refs:
            return
        ready, _ = self.ray.wait(list(refs.values()), num_returns=len(refs), timeout=PING_S)
        job_id = gang.handle.job_id
        self.log_dir(job_id).mkdir(parents=True, exist_ok=True)
        with open(self.job_dir(job_id) / "launcher.log", "ab") as merged:
            for rank, ref in refs.items():
                if ref not in ready:
                    continue
                try:
                    data = self.ray.get(ref)
                except self.ray.exceptions.RayError:
                    continue
                if not data:
                    continue
                gang.offsets[rank] += len(data)
                with open(self.log_dir(job_id) / f"rank-{rank}.log", "ab") as f:
                    f.write(data)
                text = gang.partial[rank] + data
                lines = text.split(b"\n")
                gang.partial[rank] = lines.pop()
                for line in lines:
                    merged.write(f"[rank {rank}] ".encode() + line + b"\n")

    # -- the interface, continued -----------------------------------------------------

    def poll(self) -> list[RunOutcome]:
        """Runs that ended (reported until released)."""
        if self._thread is None:  # no monitor thread (tests): look now
            with self.lock:
                for gang in list(self.gangs.values()):
                    if gang.outcome is None:
                        self._check(gang)
        with self.lock:
            self._attention.clear()
            return [g.outcome for g in self.gangs.values() if g.outcome is not None]

    def release(self, handle: RunHandle) -> None:
        """Forget a recorded run: flush its output, kill its actors, remove its placement group."""
        with self.lock:
            gang = self._gang(handle)
            if gang is None:
                return
            del self.gangs[handle.job_id]
            if gang.ready_ref is None:
                self._copy_logs(gang)
            self._remove(gang)

    def _remove(self, gang: _Gang) -> None:
        for rank, actor in enumerate(gang.actors):
            if actor is None:
                continue
            if rank not in gang.dead:
                actor.close.remote()
            self.ray.kill(actor, no_restart=True)
        if gang.group is not None:
            try:
                self.ray.util.remove_placement_group(gang.group)
            except Exception:  # already gone
                pass

    def needs_attention(self) -> bool:
        """True when a run ended (the monitor thread sets it)."""
        if self._attention.is_set():
            return True
        with self.lock:
            return any(g.outcome is not None for g in self.gangs.values())

    def adopt(self, handle: RunHandle) -> bool:
        """Watch a gang started by an earlier service: True when its actors are found and all were launched."""
        try:
            world = int(handle.ref.removeprefix("ray:"))
        except ValueError:
            return False
        return self._adopt(handle.job_id, handle.attempt, world)

    def _adopt(self, job_id: int, attempt: int, world: int) -> bool:
        ray = self.ray
        actors: list[Any] = []
        for rank in range(world):
            try:
                actors.append(ray.get_actor(actor_name(job_id, attempt, rank), namespace=NAMESPACE))
            except ValueError:
                actors.append(None)
        try:
            group = ray.util.get_placement_group(group_name(job_id, attempt))
        except ValueError:
            group = None
        found = [a for a in actors if a is not None]
        statuses: list[dict[str, Any]] = []
        try:
            statuses = ray.get([a.status.remote() for a in found], timeout=10)
            nodes = ray.get([a.node.remote() for a in found], timeout=10)
        except Exception:
            statuses, nodes = [], []
        handle = RunHandle(job_id, attempt, f"ray:{world}")
        if not found or len(statuses) != len(found) or not all(s["launched"] for s in statuses):
            # Gone, or started half-way when the service died: nothing to adopt; clean up what is left.
            self._remove(_Gang(handle, world, actors, [], [], group=group))
            return False
        by_id = {n.node_id: n.name for n in self._nodes}
        node_ids, names = [], []
        it = iter(nodes)
        for actor in actors:
            info = next(it) if actor is not None else {"node_id": ""}
            node_ids.append(info["node_id"])
            names.append(by_id.get(info["node_id"], info["node_id"][:8]))
        gang = _Gang(handle, world, actors, node_ids, names, group=group, offsets=[0] * world, partial=[b""] * world)
        for rank, actor in enumerate(actors):
            if actor is None:
                gang.dead[rank] = "not found"
            else:
                gang.waits[rank] = actor.wait.remote()
        for st in statuses:
            if st.get("stop_deadline") is not None:
                gang.stop_asked, gang.kill_at = True, float(st["stop_deadline"])
        for rank in range(world):  # what was copied before the restart is not copied twice
            try:
                gang.offsets[rank] = (self.log_dir(job_id) / f"rank-{rank}.log").stat().st_size
            except OSError:
                pass
        with self.lock:
            self.gangs[job_id] = gang
        return True

    def find(self, job_id: int, attempt: int) -> RunHandle | None:
        """The run of (job, attempt) from its named actors, if it was started."""
        world = 0
        while True:
            try:
                self.ray.get_actor(actor_name(job_id, attempt, world), namespace=NAMESPACE)
            except ValueError:
                break
            world += 1
        if world == 0:
            return None
        return RunHandle(job_id, attempt, f"ray:{world}") if self._adopt(job_id, attempt, world) else None

    def running(self) -> list[int]:
        """Job ids with a run in progress."""
        with self.lock:
            return [j for j, g in self.gangs.items() if g.outcome is None]

    def close(self) -> None:
        """Stop watching and disconnect (gangs keep running on Ray; a new service adopts them)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.ray.shutdown()

    def _gang(self, handle: RunHandle) -> _Gang | None:
        gang = self.gangs.get(handle.job_id)
        return gang if gang is not None and gang.handle.attempt == handle.attempt else None


def worker_command(argv: list[str]) -> list[str]:
    """The command one rank runs for a job's entrypoint (python scripts and modules on this python, unbuffered)."""
    args = entrypoint_args(argv)
    if args[0] == "--no-python":
        return args[1:]
    if args[0] == "-m" or args[0].endswith(".py"):
        return [PYTHON, "-u", *args]  # the node's own interpreter: the actor puts it in
    return args
