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
    from typer.exceptions import Abort, TyperException

    _register()
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


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    entry()
