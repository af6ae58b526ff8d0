"""CLI commands of the job runtime: `corral run` and `corral doctor`, and how a typer app is invoked.

`invoke` is the error contract of every corral command line (a user's mistake
is one `error:` line and exit code 2); the CLI and the service's runner
(`python -m corral.control.runner`, which runs `corral run` without the rest
of the CLI) both call it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from corral.errors import UserError, one_line
from corral.runtime.launch import MAX_NPROC


def run(
    ctx: typer.Context,
    script: Annotated[
        str, typer.Argument(help="Training script (.py), module (-m) or executable, followed by its own arguments.")
    ],
    nproc: Annotated[
        int,
        typer.Option(
            "--nproc",
            "-n",
            "--nproc-per-node",
            "--nproc_per_node",
            help=f"Worker processes to start (per node), at most {MAX_NPROC}.",
        ),
    ] = 1,
    servers: Annotated[
        int,
        typer.Option(
            help="Parameter-server processes to start beside the workers (for corral.init(strategy='ps')), "
            f"at most {MAX_NPROC}."
        ),
    ] = 0,
    max_restarts: Annotated[
        int,
        typer.Option("--max-restarts", "--max_restarts", help="Restart the whole gang this many times on a failure."),
    ] = 0,
    master_addr: Annotated[
        str, typer.Option("--master-addr", "--master_addr", help="Address of the rendezvous (node 0's host).")
    ] = "127.0.0.1",
    master_port: Annotated[
        int | None,
        typer.Option("--master-port", "--master_port", help="Rendezvous port (default: a free port)."),
    ] = None,
    rdzv_endpoint: Annotated[
        str | None,
        typer.Option("--rdzv-endpoint", "--rdzv_endpoint", help="HOST[:PORT] of the rendezvous (torchrun's spelling)."),
    ] = None,
    rdzv_id: Annotated[
        str | None, typer.Option("--rdzv-id", "--rdzv_id", help="Run id the workers see as TORCHELASTIC_RUN_ID.")
    ] = None,
    standalone: Annotated[
        bool, typer.Option("--standalone", help="One node, rendezvous on a free local port (as torchrun's).")
    ] = False,
    nnodes: Annotated[
        str, typer.Option("--nnodes", help="Nodes of the gang; each runs `corral run` with its --node-rank.")
    ] = "1",
    node_rank: Annotated[
        int, typer.Option("--node-rank", "--node_rank", help="This node's rank: 0 hosts the rendezvous.")
    ] = 0,
    module: Annotated[
        bool, typer.Option("--module", "-m", help="SCRIPT is a Python module: run `python -m SCRIPT`.")
    ] = False,
    no_python: Annotated[
        bool, typer.Option("--no-python", "--no_python", help="Run SCRIPT as an executable, not through python.")
    ] = False,
    log_dir: Annotated[Path | None, typer.Option(help="Also write each rank's output to DIR/rank-N.log.")] = None,
    grace_period: Annotated[
        float, typer.Option(help="Seconds between SIGTERM and SIGKILL when stopping workers.")
    ] = 3.0,
) -> None:
    """Run SCRIPT on N local workers with torchrun's environment; restart the gang on failure."""
    from corral.runtime.launch import LaunchConfig, launch

    addr, port, n = _rendezvous(master_addr, master_port, rdzv_endpoint, standalone, nnodes, node_rank)
    cfg = LaunchConfig(
        script=script,
        args=list(ctx.args),
        nproc=nproc,
        servers=servers,
        max_restarts=max_restarts,
        master_addr=addr,
        master_port=port,
        log_dir=log_dir,
        grace_period=grace_period,
        module=module,
        no_python=no_python,
        nnodes=n,
        node_rank=node_rank,
    )
    if rdzv_id:
        cfg.run_id = rdzv_id
    result = launch(cfg)
    raise typer.Exit(result.exit_code)


def _rendezvous(
    addr: str, port: int | None, endpoint: str | None, standalone: bool, nnodes: str, node_rank: int
) -> tuple[str, int | None, int]:
    """The rendezvous address, port and node count from torchrun's options, checked; UserError names a bad one."""
    if ":" in nnodes:
        raise UserError(f"--nnodes {nnodes}: elastic node ranges (MIN:MAX) are not supported by corral run")
    try:
        n = int(nnodes)
    except ValueError:
        raise UserError(f"--nnodes must be an integer, got {nnodes!r}") from None
    if n < 1:
        raise UserError(f"--nnodes must be >= 1, got {n}")
    if not 0 <= node_rank < n:
        raise UserError(f"--node-rank must be in 0..{n - 1} (--nnodes {n}), got {node_rank}")
    if n > 1 and standalone:
        raise UserError(f"--standalone is one node; it cannot go with --nnodes {n}")
    if standalone:
        return "127.0.0.1", None, 1
    if endpoint:
        host, _, raw = endpoint.rpartition(":") if ":" in endpoint else (endpoint, "", "")
        if raw:
            try:
                port = int(raw)
            except ValueError:
                raise UserError(f"--rdzv-endpoint port must be an integer, got {raw!r}") from None
        addr = host or addr
    import socket

    try:
        socket.getaddrinfo(addr, None)
    except OSError:
        raise UserError(f"--master-addr {addr!r} does not resolve") from None
    return addr, port, n


def doctor() -> None:
    """Check that this machine can train: versions, devices, backends, /dev/shm, a 2-process all-reduce."""
    from rich.console import Console
    from rich.table import Table

    from corral.runtime.doctor import missing, run_checks

    console = Console()
    with console.status("checking (a 2-process gloo all-reduce takes a few seconds)..."):
        checks = run_checks()
    table = Table(title="corral doctor")
    table.add_column("check")
    table.add_column("result")
    table.add_column("", justify="center")
    for c in checks:
        mark = "[green]ok[/]" if c.ok else ("[red]missing[/]" if c.required else "[yellow]warn[/]")
        table.add_row(c.name, c.value, mark)
    console.print(table)
    problem = missing(checks)
    if problem:
        print(f"cannot train on this machine: {problem}", file=sys.stderr)
        raise typer.Exit(1)
    console.print("[green]this machine can train on CPU[/]")


def register(app: typer.Typer) -> None:
    """Add the runtime's commands to `app`."""
    app.command(
        "run",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "allow_interspersed_args": False},
    )(run)
    app.command("doctor")(doctor)


def invoke(app: typer.Typer, argv: list[str] | None) -> int:
    """Run `app` on `argv`; a UserError or a usage mistake becomes one line on stderr and exit code 2."""
    from typer.exceptions import Abort, TyperException

    try:
        code = app(args=argv, standalone_mode=False)
    except UserError as exc:
        print(f"error: {one_line(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except TyperException as exc:  # unknown option, bad value, missing argument
        print(f"error: {one_line(exc.format_message())}", file=sys.stderr)
        return 2
    except (Abort, KeyboardInterrupt):
        return 130
    return int(code or 0) if isinstance(code, int) else 0


def run_main(argv: list[str]) -> int:
    """`corral run ARGV` in this process, with the runtime's commands only: its exit code."""
    app = typer.Typer(name="corral", add_completion=False, pretty_exceptions_enable=False)
    register(app)
    return invoke(app, ["run", *argv])
