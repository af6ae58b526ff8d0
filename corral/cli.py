"""The `corral` command line: one typer app; every command is a thin call into a package.

`corral submit FILE` tries a fast path first (corral.control.submit_fast): scripts call it in loops, and
it imports neither typer nor pydantic nor httpx. Everything it does not take runs on the typer app,
which is built on first use (`app`).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import typer

_app: typer.Typer | None = None
_registered = False


def _get_app() -> typer.Typer:
    global _app
    if _app is None:
        import typer

        _app = typer.Typer(
            name="corral",
            help="Schedule and run distributed training jobs.",
            no_args_is_help=True,
            add_completion=False,
            pretty_exceptions_enable=False,
        )
    return _app


def __getattr__(name: str) -> Any:
    if name == "app":  # corral.cli.app: the typer app, built on first use
        return _get_app()
    raise AttributeError(f"module 'corral.cli' has no attribute {name!r}")


def _register() -> None:
    global _registered
    if _registered:  # main() may run many times in one process (tests)
        return
    _registered = True
    # Each package owns its commands; importing these modules must stay cheap
    # (heavy imports such as torch or matplotlib happen inside the commands).
    from corral.control import account_commands
    from corral.control import commands as control_commands
    from corral.runtime import commands as runtime_commands
    from corral.sim import cli as sim_cli

    app = _get_app()
    runtime_commands.register(app)
    sim_cli.register(app)
    control_commands.register(app)
    account_commands.register(app)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; a UserError or a usage mistake becomes one line on stderr and exit code 2."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["submit"]:
        from corral.control.submit_fast import submit

        code = submit(args[1:])
        if code is not None:
            return code
    from corral.runtime.commands import invoke

    _register()
    return invoke(_get_app(), argv)


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    entry()
