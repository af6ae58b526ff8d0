"""Users' and groups' limits and shares: what an admin sets, what a submit is checked against, and the
device quotas and fair shares the scheduler reads each round (like Slurm's associations)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from corral.control.store import Group, Job, Store, User
from corral.errors import UserError
from corral.sched.quotas import Quotas

QUEUED = ("PENDING", "RESTARTING")  # a job "queued" for max_queued: waiting for devices
LIMITS = ("max_devices", "max_queued", "max_priority")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class LimitExceeded(UserError):
    """A submit over a limit of its user or group (HTTP 403 naming the limit)."""

    status = 403


class NotFound(UserError):
    """An unknown user or group (HTTP 404)."""

    status = 404


class GroupExists(UserError):
    """A group of that name exists (HTTP 409)."""

    status = 409


def _apply(row: User | Group, changes: Mapping[str, Any]) -> None:
    for key, value in changes.items():
        if key in LIMITS or key == "share":
            setattr(row, key, value)


def set_user(store: Store, name: str, changes: Mapping[str, Any]) -> User:
    """Change a user's limits, share or group (`group`: a group's name, "" for none); NotFound if unknown."""
    with store.session() as s:
        user = s.scalar(select(User).where(User.name == name))
        if user is None:
            raise NotFound(f"name: no user {name!r}")
        if "group" in changes:
            group = changes["group"]
            if group and s.scalar(select(Group).where(Group.name == group)) is None:
                raise NotFound(f"group: no group {group!r} (create it first: corral group create {group})")
            user.group_name = group or None
        _apply(user, changes)
        s.flush()
        return user


def create_group(store: Store, name: str, changes: Mapping[str, Any]) -> Group:
    """Create a group; UserError (409) when the name is taken."""
    if not NAME.match(name):
        raise UserError(f"name: {name!r} is not a group name (letters, digits, . _ -; at most 64)")
    try:
        with store.session() as s:
            group = Group(name=name)
            _apply(group, {"share": 1.0, **changes})
            s.add(group)
            s.flush()
            return group
    except IntegrityError:
        raise GroupExists(f"name: group {name!r} exists (change it with corral group set)") from None


def set_group(store: Store, name: str, changes: Mapping[str, Any]) -> Group:
    """Change a group's limits or share; NotFound if unknown."""
    with store.session() as s:
        group = s.scalar(select(Group).where(Group.name == name))
        if group is None:
            raise NotFound(f"name: no group {name!r}")
        _apply(group, changes)
        s.flush()
        return group


def delete_group(store: Store, name: str) -> None:
    """Delete a group; its members are left without one."""
    with store.session() as s:
        group = s.scalar(select(Group).where(Group.name == name))
        if group is None:
            raise NotFound(f"name: no group {name!r}")
        for user in s.scalars(select(User).where(User.group_name == name)):
            user.group_name = None
        s.delete(group)


def users(store: Store) -> list[User]:
    """Every user, by name."""
    with store.session() as s:
        return list(s.scalars(select(User).order_by(User.name)))


def groups(store: Store) -> list[Group]:
    """Every group, by name."""
    with store.session() as s:
        return list(s.scalars(select(Group).order_by(Group.name)))


@dataclass(frozen=True)
class Snapshot:
    """What the scheduler reads of the accounts each round: device quotas and fair shares."""

    quotas: Quotas
    shares: dict[str, float]  # user -> share
    groups: dict[str, str]  # user -> group
    group_shares: dict[str, float]  # group -> share, for groups that have members


def snapshot(store: Store) -> Snapshot:
    """Every user's and group's quota and share, read in one transaction."""
    with store.session() as s:
        rows = list(s.execute(select(User.name, User.group_name, User.max_devices, User.share)))
        grows = list(s.execute(select(Group.name, Group.max_devices, Group.share)))
    group_of = {name: group for name, group, _, _ in rows if group}
    return Snapshot(
        quotas=Quotas(
            users={name: int(cap) for name, _, cap, _ in rows if cap is not None},
            groups={name: int(cap) for name, cap, _ in grows if cap is not None},
            group_of=group_of,
        ),
        shares={name: float(share) for name, _, _, share in rows},
        groups=group_of,
        group_shares={name: float(share) for name, _, share in grows if name in set(group_of.values())},
    )


def quotas(store: Store) -> Quotas:
    """The device quotas of every user and group that has one, and each user's group."""
    return snapshot(store).quotas


def check_submit(store: Store, user: str, priority: int, count: int = 1) -> None:
    """LimitExceeded naming the limit when `count` more jobs of `user` at `priority` would break one."""
    with store.session() as s:
        row = s.scalar(select(User).where(User.name == user))
        if row is None:
            return
        scopes: list[tuple[str, User | Group]] = [(f"user {user}", row)]
        group = s.scalar(select(Group).where(Group.name == row.group_name)) if row.group_name else None
        if group is not None:
            scopes.append((f"group {group.name}", group))
        for who, limits in scopes:
            if limits.max_priority is not None and priority > limits.max_priority:
                raise LimitExceeded(f"priority: {priority} is above the max_priority {limits.max_priority} of {who}")
            if limits.max_queued is not None:
                members = [user] if limits is row else _members(s, limits.name)
                queued = s.scalar(select(func.count(Job.id)).where(Job.user.in_(members), Job.state.in_(QUEUED))) or 0
                if queued + count > limits.max_queued:
                    raise LimitExceeded(
                        f"max_queued: {who} may have {limits.max_queued} jobs waiting; "
                        f"{queued} wait{'s' if queued == 1 else ''}, this submit adds {count}"
                    )


def _members(s: Any, group: str) -> list[str]:
    return list(s.scalars(select(User.name).where(User.group_name == group)))
