"""`corral run`: start a gang of N workers with torchrun's environment, watch it, restart it.

The launcher hosts the rendezvous TCPStore itself, a fresh one per attempt:
workers connect as clients (TORCHELASTIC_USE_AGENT_STORE=True), so a restarted
gang never reads the dead gang's keys (see TORCH-NOTES: restarting on the same
store with stale keys hangs) and rank 0 does not pay for starting a store.
The workers start first: the launcher imports torch for the store while they
start (see _Store), so a job's first line does not wait on that import.

With `--servers S` it also starts S parameter servers (`python -m
corral.runtime.ps.server`, output prefixed `[server k]`) for the `ps` strategy.
They belong to the gang: one failing fails the gang. Signals to the launcher
go to the workers only, so the servers stay up while the workers checkpoint;
servers leave when rank 0 says so, or are stopped once every worker has ended.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from corral.errors import UserError
from corral.runtime import env
from corral.runtime.exitcodes import PREEMPTED_EXIT_CODE
from corral.runtime.nodes import POLL_S, NodeGroup

SUCCEEDED, FAILED, PREEMPTED, INTERRUPTED = "succeeded", "failed", "preempted", "interrupted"
# Processes per node: the most devices a job may ask for (corral.control.spec), so the service never asks for more.
MAX_NPROC = 4096


@dataclass
class LaunchConfig:
    """What `corral run` was asked to start."""

    script: str
    args: Sequence[str] = ()
    nproc: int = 1
    servers: int = 0
    max_restarts: int = 0
    master_port: int | None = None
    master_addr: str = "127.0.0.1"
    log_dir: Path | None = None
    grace_period: float = 3.0
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    extra_env: dict[str, str] = field(default_factory=dict)
    module: bool = False  # -m: `script` is a module, run as `python -m script`
    nnodes: int = 1  # static multi-node: launchers on this many hosts form one gang (corral.runtime.nodes)
    node_rank: int = 0
    no_python: bool = False  # --no-python: `script` is an executable, run as it is


@dataclass
class LaunchResult:
    """How the gang ended."""

    state: str
    exit_code: int
    restarts: int
    failed_rank: int | None = None
    failed_server: int | None = None


def validate(cfg: LaunchConfig) -> list[str]:
    """Check the config before anything starts; return the command that runs one worker."""
    if cfg.nproc < 1:
        raise UserError(f"--nproc must be >= 1, got {cfg.nproc}")
    if cfg.nproc > MAX_NPROC:
        raise UserError(f"--nproc must be at most {MAX_NPROC} (processes per node), got {cfg.nproc}")
    if cfg.servers < 0:
        raise UserError(f"--servers must be >= 0, got {cfg.servers}")
    if cfg.servers > MAX_NPROC:
        raise UserError(f"--servers must be at most {MAX_NPROC}, got {cfg.servers}")
    if cfg.max_restarts < 0:
        raise UserError(f"--max-restarts must be >= 0, got {cfg.max_restarts}")
    if cfg.grace_period < 0:
        raise UserError(f"--grace-period must be >= 0, got {cfg.grace_period}")
    if cfg.master_port is not None and not 1 <= cfg.master_port <= 65535:
        raise UserError(f"--master-port must be in 1..65535, got {cfg.master_port}")
    if cfg.log_dir is not None:
        _check_log_dir(cfg.log_dir)
    if cfg.nnodes > 1:
        if cfg.master_port is None:
            raise UserError("--nnodes > 1 needs --master-port (or --rdzv-endpoint HOST:PORT): every node must know it")
        if cfg.servers:
            raise UserError("--servers runs on one node: it cannot go with --nnodes > 1")
    script = cfg.script
    if script.startswith("-"):
        name = script.split("=", 1)[0]
        if name in TORCHRUN_UNSUPPORTED:
            raise UserError(f"torchrun option {name} is not supported by corral run")
        raise UserError(f"unknown option {script} (corral run options come before the script)")
    if cfg.module and cfg.no_python:
        raise UserError("-m/--module and --no-python exclude each other: a module runs through python")
    if cfg.module:
        return [sys.executable, "-u", "-m", script, *cfg.args]
    if script.endswith(".py") and not cfg.no_python:
        if not Path(script).is_file():
            raise UserError(f"script not found: {script}")
        # -u: unbuffered, so lines reach the prefixer (and the logs) as they are printed.
        return [sys.executable, "-u", script, *cfg.args]
    resolved = shutil.which(script) if os.sep not in script else (script if os.access(script, os.X_OK) else None)
    if resolved is None:
        raise UserError(f"script not found or not executable: {script}")
    return [resolved, *cfg.args]


def _check_log_dir(log_dir: Path) -> None:
    """--log-dir is a folder, or one that can be made: not a file, nor under one."""
    existing = log_dir
    while not existing.exists() and existing != existing.parent and not existing.is_symlink():
        existing = existing.parent
    if not existing.is_dir():
        what = "it" if existing == log_dir else str(existing)
        raise UserError(f"--log-dir {log_dir}: {what} exists and is not a folder")


# torchrun options corral run does not implement (dynamic rendezvous, agent settings, output plumbing):
# each is refused by name instead of being taken for the script.
TORCHRUN_UNSUPPORTED = frozenset(
    {
        "--rdzv-backend", "--rdzv_backend", "--rdzv-conf", "--rdzv_conf", "--monitor-interval",
        "--monitor_interval", "--start-method", "--start_method", "--role", "--redirects", "-r", "--tee", "-t",
        "--local-addr", "--local_addr", "--local-ranks-filter", "--local_ranks_filter", "--logs-specs",
        "--logs_specs", "--max-nodes", "--min-nodes", "--event-log-handler", "--numa-binding",
    }
)  # fmt: skip
PYTHON_FLAGS = frozenset("-u -B -E -I -O -OO -s -S -q -b -bb -d -v".split())  # interpreter flags with no value
PYTHON_VALUE_FLAGS = frozenset({"-X", "-W"})


def entrypoint_args(argv: Sequence[str]) -> list[str]:
    """The `corral run` arguments (script or `-m module`, then its arguments) for a job's command line.

    `python [flags] x.py ...` and `python [flags] -m pkg.mod ...` run on the launcher's python (the
    interpreter flags are dropped: workers always run unbuffered); anything else runs as the command it is.
    """
    if not argv:
        raise UserError("the entrypoint is empty")
    if not Path(argv[0]).name.startswith("python"):
        return list(argv)
    i = 1
    while i < len(argv) and (argv[i] in PYTHON_FLAGS or argv[i] in PYTHON_VALUE_FLAGS):
        i += 2 if argv[i] in PYTHON_VALUE_FLAGS else 1
    rest = list(argv[i:])
    if not rest:
        raise UserError(f"the entrypoint {' '.join(argv)!r} names no script or module")
    if rest[0] == "-m":
        if len(rest) < 2:
            raise UserError(f"the entrypoint {' '.join(argv)!r}: -m needs a module name")
        return ["-m", *rest[1:]]
    if rest[0] == "-c":
        return ["--no-python", *argv]  # inline code: run it as written
    return rest


def _exit_code(returncode: int) -> int:
    """A process's exit status as a shell reports it (killed by signal N -> 128+N)."""
    return 128 - returncode if returncode < 0 else returncode


def _describe(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


class _Store:
    """The rendezvous store the launcher hosts for one attempt.

    The launcher binds the store's listening socket itself (cheap: the port is known and a busy
    --master-port refused before anything starts), starts the workers, and only then imports torch
    (about a second) to serve a TCPStore on that socket (`master_listen_fd`). A worker that connects
    earlier waits in the socket's backlog, so the workers' start never waits on the launcher's import.
    """

    def __init__(self, addr: str, port: int | None, world_size: int) -> None:
        self.world_size = world_size
        try:
            # Where TCPStore's own server listens: every address, IPv6 and IPv4 alike.
            if socket.has_dualstack_ipv6():
                self.sock = socket.create_server(
                    ("", port or 0), family=socket.AF_INET6, backlog=socket.SOMAXCONN, dualstack_ipv6=True
                )
            else:
                self.sock = socket.create_server(("", port or 0), backlog=socket.SOMAXCONN)
        except OSError as exc:
            if port:
                raise UserError(
                    f"port {port} is already in use (or cannot be bound); pick another --master-port "
                    "or leave it out for a free one"
                ) from exc
            raise
        self.addr = addr
        self.port: int = self.sock.getsockname()[1]
        self.store: Any = None
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._closed = False

    def serve(self) -> None:
        """Serve the store on the bound socket (imports torch); `error` keeps why it failed."""
        import datetime as dt

        try:
            from torch.distributed import TCPStore

            with self._lock:
                if self._closed:  # the attempt ended while torch was being imported
                    return
                self.store = TCPStore(
                    self.addr,
                    self.port,
                    self.world_size,
                    is_master=True,
                    wait_for_workers=False,
                    timeout=dt.timedelta(minutes=10),
                    master_listen_fd=self.sock.fileno(),
                )
                self.sock.detach()  # the store owns (and closes) the socket now
        except BaseException as exc:
            self.error = exc

    def serve_in_background(self) -> None:
        """`serve` on a thread, so the launcher watches the workers it already started meanwhile.

        Not a daemon: an interpreter never exits in the middle of importing torch (the service's runner,
        done, leaves with os._exit rather than wait for an import nobody needs any more)."""
        threading.Thread(target=self.serve, name="corral-store").start()

    def raise_if_failed(self) -> None:
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        """Stop serving and free the port at once, also while `serve` is still importing torch."""
        with self._lock:
            self._closed = True
            self.store = None
            self.sock.close()  # a no-op once the store owns it


class _Gang:
    """The worker processes of one attempt and the threads that copy their output."""

    def __init__(
        self,
        cfg: LaunchConfig,
        cmd: list[str],
        port: int,
        attempt: int,
        out: IO[bytes],
        err: IO[bytes],
        errors_dir: str,
    ):
        self.cfg = cfg
        self.procs: list[subprocess.Popen[bytes]] = []  # the workers by rank, then the servers
        self.labels: list[str] = []
        self.threads: list[threading.Thread] = []
        self.lock = threading.Lock()
        base = dict(os.environ)
        base.update(cfg.extra_env)
        # Threads x processes must stay <= cores (TORCH-NOTES): one thread per
        # worker unless the user chose otherwise, as torchrun does.
        if cfg.nproc + cfg.servers > 1:
            base.setdefault("OMP_NUM_THREADS", "1")
        if cfg.master_addr in ("127.0.0.1", "localhost"):
            base.setdefault("GLOO_SOCKET_IFNAME", "lo")
        base["PYTHONUNBUFFERED"] = "1"
        if out.isatty() if hasattr(out, "isatty") else False:
            base.setdefault("FORCE_COLOR", "1")  # rich in the workers keeps its colours through the pipe
        self.logs: list[IO[bytes] | None] = []
        self.error_files: list[Path] = []
        try:
            self._start_all(cmd, base, port, attempt, out, err, errors_dir)
        except BaseException:
            # All or none: a start that fails midway (no memory, too many processes, an interrupt)
            # stops the ranks already started, so none is left orphaned.
            self.stop(cfg.grace_period)
            self.close()
            raise

    def _start_all(
        self,
        cmd: list[str],
        base: dict[str, str],
        port: int,
        attempt: int,
        out: IO[bytes],
        err: IO[bytes],
        errors_dir: str,
    ) -> None:
        cfg = self.cfg
        for local in range(cfg.nproc):
            rank = cfg.node_rank * cfg.nproc + local
            worker_env = dict(base)
            # torchrun's contract: @record (torch.distributed.elastic) writes the worker's exception here.
            error_file = Path(errors_dir) / f"attempt-{attempt}" / f"rank-{rank}.json"
            error_file.parent.mkdir(parents=True, exist_ok=True)
            error_file.unlink(missing_ok=True)
            self.error_files.append(error_file)
            worker_env["TORCHELASTIC_ERROR_FILE"] = str(error_file)
            worker_env.update(
                env.worker_env(
                    rank_=rank,
                    world_size_=cfg.nproc * cfg.nnodes,
                    local_rank_=local,
                    local_world_size_=cfg.nproc,
                    group_rank=cfg.node_rank,
                    group_world_size=cfg.nnodes,
                    master_addr=cfg.master_addr,
                    master_port=port,
                    restart_count_=attempt,
                    max_restarts=cfg.max_restarts,
                    run_id=cfg.run_id,
                    servers=cfg.servers,
                )
            )
            self._start(cmd, worker_env, f"rank {rank}", f"rank-{rank}.log", attempt, out, err)
        server_cmd = [sys.executable, "-u", "-m", "corral.runtime.ps.server"]
        for k in range(cfg.servers):
            server_env = dict(base)
            server_env.update(
                env.server_env(
                    index=k,
                    workers=cfg.nproc,
                    servers=cfg.servers,
                    master_addr=cfg.master_addr,
                    master_port=port,
                    restart_count_=attempt,
                    max_restarts=cfg.max_restarts,
                    run_id=cfg.run_id,
                )
            )
            self._start(server_cmd, server_env, f"server {k}", f"server-{k}.log", attempt, out, err)

    def _start(
        self,
        cmd: list[str],
        proc_env: dict[str, str],
        label: str,
        log_name: str,
        attempt: int,
        out: IO[bytes],
        err: IO[bytes],
    ) -> None:
        log = None
        if self.cfg.log_dir is not None:
            try:
                log = open(self.cfg.log_dir / log_name, "ab")
            except OSError as exc:
                raise UserError(f"--log-dir: cannot write {self.cfg.log_dir / log_name}: {exc.strerror}") from None
            if attempt:
                log.write(f"--- restart {attempt} ---\n".encode())
                log.flush()
        self.logs.append(log)
        # A new session per process: signals reach it and its own children
        # (data-loader processes) through its process group.
        try:
            proc = subprocess.Popen(
                cmd,
                env=proc_env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as exc:
            started = len(self.procs)
            also = f"; stopping the {started} process(es) already started" if started else ""
            raise UserError(f"cannot start {label}: {exc.strerror or exc}{also}") from None
        self.procs.append(proc)
        self.labels.append(label)
        for stream, sink in ((proc.stdout, out), (proc.stderr, err)):
            t = threading.Thread(target=self._pump, args=(label, stream, sink, log), daemon=True)
            t.start()
            self.threads.append(t)

    def _pump(self, label: str, stream: IO[bytes] | None, sink: IO[bytes], log: IO[bytes] | None) -> None:
        assert stream is not None
        prefix = f"[{label}] ".encode()
        for line in iter(stream.readline, b""):
            with self.lock:
                sink.write(prefix + line)
                sink.flush()
                if log is not None:
                    log.write(line)
                    log.flush()
        stream.close()

    @property
    def workers(self) -> list[subprocess.Popen[bytes]]:
        """The worker processes (rank order), without the servers."""
        return self.procs[: self.cfg.nproc]

    def signal(self, sig: int, *, workers_only: bool = False) -> None:
        """Send `sig` to every process still running (and its process group), or to the workers only."""
        for proc in self.workers if workers_only else self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    pass

    def alive(self) -> bool:
        return any(p.poll() is None for p in self.procs)

    def stop(self, grace: float) -> None:
        """SIGTERM every worker, then SIGKILL whoever is left after `grace` seconds."""
        self.signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        self.signal(signal.SIGKILL)
        for p in self.procs:
            p.wait()

    def close(self) -> None:
        for t in self.threads:
            t.join(timeout=5)
        for log in self.logs:
            if log is not None:
                log.close()


class _Signals:
    """Records SIGINT/SIGTERM sent to the launcher so the loop can forward them."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, lambda s, f: self.received.append(s))
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def launch(cfg: LaunchConfig, *, out: IO[bytes] | None = None, err: IO[bytes] | None = None) -> LaunchResult:
    """Run the gang to the end: restart it on failure while restarts remain; return how it ended."""
    cmd = validate(cfg)
    out = out or sys.stdout.buffer
    err = err or sys.stderr.buffer
    if cfg.log_dir is not None:
        try:
            cfg.log_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"--log-dir {cfg.log_dir}: cannot create the folder: {exc.strerror}") from None

    def say(msg: str) -> None:
        err.write(f"[corral] {msg}\n".encode())
        err.flush()

    group = NodeGroup(cfg.master_addr, cfg.master_port or 0, cfg.nnodes, cfg.node_rank) if cfg.nnodes > 1 else None
    errors_dir = tempfile.mkdtemp(prefix=f"corral-run-{cfg.run_id}-")
    attempt = 0
    world = cfg.nproc * cfg.nnodes
    try:
        with _Signals() as signals:
            while True:
                # One node hosts the rendezvous store of each attempt; alone, it may sit on --master-port,
                # with other nodes that port is the control store's, so the rendezvous takes a free one.
                store = None
                if cfg.node_rank == 0:
                    store = _Store(cfg.master_addr, None if group else cfg.master_port, world + cfg.servers)
                    port = store.port
                    if group:  # torch is imported already (the control store): serve before announcing
                        store.serve()
                        store.raise_if_failed()
                        group.announce(attempt, port)
                else:
                    assert group is not None
                    port = group.rendezvous_port(attempt)
                servers = f" and {cfg.servers} server(s)" if cfg.servers else ""
                where = f" on node {cfg.node_rank}/{cfg.nnodes} ({world} in the gang)" if group else ""
                say(
                    f"starting {cfg.nproc} worker(s){servers}{where}, attempt {attempt + 1}/{cfg.max_restarts + 1}, "
                    f"rendezvous {cfg.master_addr}:{port}"
                )
                try:
                    gang = _Gang(cfg, cmd, port, attempt, out, err, errors_dir)
                except BaseException:
                    if store is not None:
                        store.close()
                    raise
                if store is not None and store.store is None:
                    store.serve_in_background()  # the workers start meanwhile; they wait for it to connect
                try:
                    outcome = _watch(gang, cfg, signals, say, group, attempt, store)
                finally:
                    if gang.alive():
                        gang.stop(cfg.grace_period)
                    gang.close()
                if group is not None:
                    # Every node takes the same decision from every node's end.
                    ends = group.end(attempt, outcome.state)
                    if outcome.state != FAILED and FAILED in ends:
                        outcome = LaunchResult(FAILED, 1, 0, failed_rank=None)
                    elif outcome.state == SUCCEEDED and PREEMPTED in ends:
                        outcome = LaunchResult(PREEMPTED, PREEMPTED_EXIT_CODE, 0)
                if store is not None:
                    store.close()
                if outcome.state == FAILED and attempt < cfg.max_restarts and not signals.received:
                    attempt += 1
                    who = (
                        f"server {outcome.failed_server}"
                        if outcome.failed_server is not None
                        else f"rank {outcome.failed_rank}"
                        if outcome.failed_rank is not None
                        else "a rank on another node"
                    )
                    say(f"restarting the gang ({attempt}/{cfg.max_restarts}) after {who} failed")
                    continue
                outcome.restarts = attempt
                if outcome.state == SUCCEEDED:
                    say(f"all {cfg.nproc} worker(s) succeeded")
                elif outcome.state == PREEMPTED:
                    say(f"preempted: checkpoint saved, exit code {PREEMPTED_EXIT_CODE}")
                return outcome
    finally:
        if group is not None:
            group.close(attempt)
        shutil.rmtree(errors_dir, ignore_errors=True)


def _failure(gang: _Gang, index: int, code: int, state: str = FAILED) -> LaunchResult:
    """The result of a gang whose process `index` (a worker rank, or a server after the workers) ended with `code`."""
    if index < gang.cfg.nproc:
        return LaunchResult(state, _exit_code(code), 0, failed_rank=gang.cfg.node_rank * gang.cfg.nproc + index)
    return LaunchResult(state, _exit_code(code), 0, failed_server=index - gang.cfg.nproc)


def _watch(
    gang: _Gang,
    cfg: LaunchConfig,
    signals: _Signals,
    say: Any,
    group: NodeGroup | None = None,
    attempt: int = 0,
    store: _Store | None = None,
) -> LaunchResult:
    """Wait for the gang to end; stop it as soon as one process fails (here, or on another node)."""
    forwarded = 0
    next_poll = 0.0
    while True:
        if store is not None:
            store.raise_if_failed()  # the gang is stopped on the way out (launch's finally)
        if group is not None and time.monotonic() >= next_poll:
            next_poll = time.monotonic() + POLL_S
            other = group.failure(attempt)
            if other is not None and other["node"] != cfg.node_rank and not signals.received:
                say(f"rank {other['rank']} on node {other['node']} failed ({other['how']}); stopping the workers")
                gang.stop(cfg.grace_period)
                return LaunchResult(FAILED, 1, 0)
        while forwarded < len(signals.received):
            sig = signals.received[forwarded]
            forwarded += 1
            if forwarded == 1:
                say(f"received {signal.Signals(sig).name}: forwarding to every worker")
                # Servers keep serving: the workers need them to save their checkpoint.
                gang.signal(sig, workers_only=True)
            else:
                say("second signal: killing every worker")
                gang.signal(signal.SIGKILL)
        all_codes = [p.poll() for p in gang.procs]
        for i, code in enumerate(all_codes):
            if code not in (None, 0, PREEMPTED_EXIT_CODE) and not signals.received:
                say(
                    f"{gang.labels[i]} failed ({_describe(code)}); stopping the other "
                    f"{'processes' if cfg.servers else 'workers'}"
                )
                if group is not None and i < cfg.nproc:
                    group.fail(attempt, {"rank": cfg.node_rank * cfg.nproc + i, "how": _describe(code)})
                gang.stop(cfg.grace_period)
                if i < cfg.nproc:
                    say(root_cause(gang, i, code))
                return _failure(gang, i, code)
        codes = all_codes[: cfg.nproc]
        if all(c is not None for c in codes):
            _stop_servers(gang, cfg)
            break
        if PREEMPTED_EXIT_CODE in codes:
            # One rank saved and stopped: its peers agreed to stop at the same
            # step, so give them the grace period to finish, then end them.
            deadline = time.monotonic() + max(cfg.grace_period, 1.0)
            while any(p.poll() is None for p in gang.workers) and time.monotonic() < deadline:
                time.sleep(0.02)
            gang.stop(0)
            codes = [p.poll() for p in gang.workers]
            break
        time.sleep(0.02)
    if PREEMPTED_EXIT_CODE in codes:
        return LaunchResult(PREEMPTED, PREEMPTED_EXIT_CODE, 0)
    if all(c == 0 for c in codes):
        return LaunchResult(SUCCEEDED, 0, 0)
    # Ended by a signal to the launcher without the Job API's clean exit.
    worst = next(c for c in codes if c not in (0, None))
    return _failure(gang, codes.index(worst), worst, INTERRUPTED if signals.received else FAILED)


def _stop_servers(gang: _Gang, cfg: LaunchConfig) -> None:
    """Every worker has ended: servers told to shut down leave at once; stop any that stay."""
    deadline = time.monotonic() + min(2.0, cfg.grace_period)
    while gang.alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    if gang.alive():
        gang.stop(cfg.grace_period)


def root_cause(gang: _Gang, index: int, code: int) -> str:
    """torchrun's kind of failure summary for worker `index`: rank, host, how it ended, when, its recorded error."""
    import datetime as dt
    import json

    cfg = gang.cfg
    proc = gang.procs[index]
    lines = [
        "root cause (first failed worker):",
        f"  time       : {dt.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"  host       : {socket.gethostname()}",
        f"  rank       : {cfg.node_rank * cfg.nproc + index} (local_rank: {index}, node: {cfg.node_rank})",
        f"  exitcode   : {_exit_code(code)} ({_describe(code)}, pid {proc.pid})",
    ]
    path = gang.error_files[index]
    try:
        recorded = json.loads(path.read_text())["message"]
        message = recorded["message"] if isinstance(recorded, dict) else str(recorded)
        lines.append(f"  error_file : {path}")
        lines.append("  error      : " + message.strip().replace("\n", "\n               "))
    except (OSError, ValueError, KeyError, TypeError):
        lines.append(
            "  error_file : <N/A> (decorate main with torch.distributed.elastic.multiprocessing.errors.record)"
        )
    return "\n".join(lines)
