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

from corral.errors import UserError


def run(
    ctx: typer.Context,
    script: Annotated[str, typer.Argument(help="Training script (.py) or executable, followed by its own arguments.")],
    nproc: Annotated[int, typer.Option("--nproc", "-n", help="Worker processes to start.")] = 1,
    servers: Annotated[
        int,
        typer.Option(help="Parameter-server processes to start beside the workers (for corral.init(strategy='ps'))."),
    ] = 0,
    max_restarts: Annotated[int, typer.Option(help="Restart the whole gang this many times on a failure.")] = 0,
    master_port: Annotated[int | None, typer.Option(help="Rendezvous port (default: a free port).")] = None,
    log_dir: Annotated[Path | None, typer.Option(help="Also write each rank's output to DIR/rank-N.log.")] = None,
    grace_period: Annotated[
        float, typer.Option(help="Seconds between SIGTERM and SIGKILL when stopping workers.")
    ] = 3.0,
) -> None:
    """Run SCRIPT on N local workers with torchrun's environment; restart the gang on failure."""
    from corral.runtime.launch import LaunchConfig, launch

    cfg = LaunchConfig(
        script=script,
        args=list(ctx.args),
        nproc=nproc,
        servers=servers,
        max_restarts=max_restarts,
        master_port=master_port,
        log_dir=log_dir,
        grace_period=grace_period,
    )
    result = launch(cfg)
    raise typer.Exit(result.exit_code)


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
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except TyperException as exc:  # unknown option, bad value, missing argument
        print(f"error: {exc.format_message()}", file=sys.stderr)
        return 2
    except (Abort, KeyboardInterrupt):
        return 130
    return int(code or 0) if isinstance(code, int) else 0


def run_main(argv: list[str]) -> int:
    """`corral run ARGV` in this process, with the runtime's commands only: its exit code."""
    app = typer.Typer(name="corral", add_completion=False, pretty_exceptions_enable=False)
    register(app)
    return invoke(app, ["run", *argv])
