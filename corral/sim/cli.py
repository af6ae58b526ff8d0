"""`corral simulate`: registered on the main app by corral.cli (placeholder until the simulator lands)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the simulator's commands to `app`."""
