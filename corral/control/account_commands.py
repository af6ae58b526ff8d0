"""`corral user ...` and `corral group ...`: admins set users' and groups' limits and fair-share weights.

Limits (a number, or "none" to remove one): --max-devices (devices held at once; a job that
would pass it waits with reason QuotaDevices), --max-queued (jobs waiting at once; a submit past
it is refused), --max-priority (the highest priority a job may ask for). --share weighs the
fairshare policy (and priority with fairshare=W).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from corral.control.commands import CaCertOpt, ServerOpt, TokenOpt, _client, _console, _esc
from corral.errors import UserError

LimitOpt = Annotated[str | None, typer.Option(metavar="N|none", show_default=False)]
ShareOpt = Annotated[float | None, typer.Option(help="Fair-share weight (> 0).", show_default=False)]
LIMITS = {"max_devices": (0, 1_000_000), "max_queued": (0, 1_000_000), "max_priority": (-1000, 1000)}


def _limit(option: str, text: str) -> int | None:
    if text.strip().lower() == "none":
        return None
    lo, hi = LIMITS[option.removeprefix("--").replace("-", "_")]
    try:
        value = int(text)
    except ValueError:
        raise UserError(f"{option}: {text!r} is not a whole number (or none)") from None
    if not lo <= value <= hi:
        raise UserError(f"{option} must be between {lo} and {hi} (or none), got {value}")
    return value


def _changes(max_devices: str | None, max_queued: str | None, max_priority: str | None, share: float | None) -> dict:
    out: dict[str, Any] = {}
    for option, value in (
        ("--max-devices", max_devices),
        ("--max-queued", max_queued),
        ("--max-priority", max_priority),
    ):
        if value is not None:
            out[option.removeprefix("--").replace("-", "_")] = _limit(option, value)
    if share is not None:
        if not 0 < share <= 1e6:
            raise UserError(f"--share must be > 0 and at most 1e6, got {share}")
        out["share"] = share
    return out


def _show(rows: list[dict[str, Any]], with_group: bool) -> None:
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    cols = ["NAME", *(["GROUP"] if with_group else []), "MAX DEVICES", "MAX QUEUED", "MAX PRIORITY", "SHARE"]
    for col in cols:
        table.add_column(col, justify="left" if col in ("NAME", "GROUP") else "right")
    none = lambda v: "-" if v is None else str(v)  # noqa: E731
    for r in rows:
        group = [_esc(r.get("group") or "-")] if with_group else []
        cells = [none(r["max_devices"]), none(r["max_queued"]), none(r["max_priority"]), f"{r['share']:g}"]
        table.add_row(_esc(r["name"]) + (" (admin)" if r.get("admin") else ""), *group, *cells)
    _console().print(table)


def user_list(server: ServerOpt = None, token: TokenOpt = None, ca_cert: CaCertOpt = None) -> None:
    """List users with their group, limits and share (admins)."""
    with _client(server, token, ca_cert) as client:
        _show(client.accounts("users"), with_group=True)


def user_set(
    name: Annotated[str, typer.Argument(help="The user.", show_default=False)],
    group: Annotated[str | None, typer.Option(help='Their group ("" for none).', show_default=False)] = None,
    max_devices: LimitOpt = None,
    max_queued: LimitOpt = None,
    max_priority: LimitOpt = None,
    share: ShareOpt = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca_cert: CaCertOpt = None,
) -> None:
    """Set a user's group, limits or share (admins)."""
    changes = _changes(max_devices, max_queued, max_priority, share)
    if group is not None:
        changes["group"] = group
    if not changes:
        raise UserError("nothing to set: give --group, --max-devices, --max-queued, --max-priority or --share")
    with _client(server, token, ca_cert) as client:
        _show([client.set_account("users", name, changes)], with_group=True)


def group_list(server: ServerOpt = None, token: TokenOpt = None, ca_cert: CaCertOpt = None) -> None:
    """List groups with their limits and share (admins)."""
    with _client(server, token, ca_cert) as client:
        _show(client.accounts("groups"), with_group=False)


def group_create(
    name: Annotated[str, typer.Argument(help="The new group.", show_default=False)],
    max_devices: LimitOpt = None,
    max_queued: LimitOpt = None,
    max_priority: LimitOpt = None,
    share: ShareOpt = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca_cert: CaCertOpt = None,
) -> None:
    """Create a group with limits that count all its members' jobs together (admins)."""
    changes = _changes(max_devices, max_queued, max_priority, share)
    with _client(server, token, ca_cert) as client:
        _show([client.create_group(name, changes)], with_group=False)


def group_set(
    name: Annotated[str, typer.Argument(help="The group.", show_default=False)],
    max_devices: LimitOpt = None,
    max_queued: LimitOpt = None,
    max_priority: LimitOpt = None,
    share: ShareOpt = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca_cert: CaCertOpt = None,
) -> None:
    """Change a group's limits or share (admins)."""
    changes = _changes(max_devices, max_queued, max_priority, share)
    if not changes:
        raise UserError("nothing to set: give --max-devices, --max-queued, --max-priority or --share")
    with _client(server, token, ca_cert) as client:
        _show([client.set_account("groups", name, changes)], with_group=False)


def group_delete(
    name: Annotated[str, typer.Argument(help="The group.", show_default=False)],
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca_cert: CaCertOpt = None,
) -> None:
    """Delete a group; its members are left without one (admins)."""
    with _client(server, token, ca_cert) as client:
        client.delete_group(name)
    _console().print(f"group {_esc(name)} deleted")


def register(app: typer.Typer) -> None:
    """Add `corral user` and `corral group` to `app` (once)."""
    if any(g.name == "user" for g in app.registered_groups):
        return
    user_app = typer.Typer(help="Users' groups, limits and shares (admins).", no_args_is_help=True)
    user_app.command("list")(user_list)
    user_app.command("set")(user_set)
    app.add_typer(user_app, name="user")
    group_app = typer.Typer(
        help="Groups: limits over all their members' jobs, and shares (admins).", no_args_is_help=True
    )
    group_app.command("list")(group_list)
    group_app.command("create")(group_create)
    group_app.command("set")(group_set)
    group_app.command("delete")(group_delete)
    app.add_typer(group_app, name="group")
