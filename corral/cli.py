"""The `corral` command line: one typer app; every command is a thin call into a package."""

from __future__ import annotations

import sys

import typer

from corral.runtime.commands import invoke

app = typer.Typer(
    name="corral",
    help="Schedule and run distributed training jobs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


_registered = False


def _register() -> None:
    global _registered
    if _registered:  # main() may run many times in one process (tests)
        return
    _registered = True
    # Each package owns its commands; importing these modules must stay cheap
    # (heavy imports such as torch or matplotlib happen inside the commands).
    from corral.control import commands as control_commands
    from corral.runtime import commands as runtime_commands
    from corral.sim import cli as sim_cli

    runtime_commands.register(app)
    sim_cli.register(app)
    control_commands.register(app)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; a UserError or a usage mistake becomes one line on stderr and exit code 2."""
    _register()
    return invoke(app, argv)


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    entry()
