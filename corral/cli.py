"""The `corral` command line: one typer app; every command is a thin call into a package."""

from __future__ import annotations

import sys

import typer

from corral.errors import UserError

app = typer.Typer(
    name="corral",
    help="Schedule and run distributed training jobs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    # Each package owns its commands; importing these modules must stay cheap
    # (heavy imports such as torch or matplotlib happen inside the commands).
    from corral.runtime import commands as runtime_commands
    from corral.sim import cli as sim_cli

    runtime_commands.register(app)
    sim_cli.register(app)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; a UserError anywhere becomes one line on stderr and exit code 2."""
    _register()
    try:
        app(args=argv, standalone_mode=False)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except SystemExit as exc:  # raised by typer.Exit inside commands
        return int(exc.code or 0)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
