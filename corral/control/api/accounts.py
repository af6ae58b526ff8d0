"""Users' and groups' limits and shares (admins only): GET /users, PATCH /users/{name}, /groups."""

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path
from pydantic import BaseModel, ConfigDict, Field

from corral.control import accounts
from corral.control.api.auth import Caller
from corral.control.api.deps import API, ServiceDep
from corral.control.store import Group, User

router = APIRouter(prefix=API, tags=["accounts"])
Name = Annotated[str, Path(min_length=1, max_length=64)]
MAX_QUEUE = 1_000_000


class LimitsIn(BaseModel):
    """Limits to change; a field sent as null removes that limit, one left out stays as it is."""

    model_config = ConfigDict(extra="forbid")

    max_devices: int | None = Field(default=None, ge=0, le=1_000_000, description="Devices held at once")
    max_queued: int | None = Field(default=None, ge=0, le=MAX_QUEUE, description="Jobs waiting at once")
    max_priority: int | None = Field(default=None, ge=-1000, le=1000, description="Highest priority a job may ask")
    share: float | None = Field(default=None, gt=0, le=1e6, allow_inf_nan=False, description="Fair-share weight")

    def changes(self) -> dict[str, Any]:
        """The fields sent, with their values (share cannot be removed: null leaves it)."""
        out = {k: getattr(self, k) for k in self.model_fields_set}
        if out.get("share", 0) is None:
            del out["share"]
        return out


class UserLimitsIn(LimitsIn):
    """A user's limits, share and group ("" or null: no group)."""

    group: str | None = Field(default=None, max_length=64)


class GroupIn(LimitsIn):
    """A new group."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class AccountOut(BaseModel):
    """A user or a group as the accounts routes show it."""

    name: str
    group: str | None = None
    admin: bool = False
    max_devices: int | None
    max_queued: int | None
    max_priority: int | None
    share: float
    token_expires: float | None = None


class AccountList(BaseModel):
    """Users or groups, by name."""

    items: list[AccountOut]


def _admin(user: Any) -> None:
    if not user.is_admin:
        raise HTTPException(403, "only an admin may manage users and groups")


def _out(row: User | Group) -> AccountOut:
    common = {k: getattr(row, k) for k in ("name", "max_devices", "max_queued", "max_priority", "share")}
    if isinstance(row, User):
        return AccountOut(**common, group=row.group_name, admin=row.is_admin, token_expires=row.token_expires)
    return AccountOut(**common)


@router.get("/users", response_model=AccountList)
def list_users(user: Caller, service: ServiceDep) -> AccountList:
    """Every user with their group, limits and share."""
    _admin(user)
    return AccountList(items=[_out(u) for u in accounts.users(service.store)])


@router.patch("/users/{name}", response_model=AccountOut)
def set_user(name: Name, body: UserLimitsIn, user: Caller, service: ServiceDep) -> AccountOut:
    """Change a user's limits, share or group."""
    _admin(user)
    changes = body.changes()
    if "group" in changes:
        changes["group"] = changes["group"] or ""
    return _out(accounts.set_user(service.store, name, changes))


@router.get("/groups", response_model=AccountList)
def list_groups(user: Caller, service: ServiceDep) -> AccountList:
    """Every group with its limits and share."""
    _admin(user)
    return AccountList(items=[_out(g) for g in accounts.groups(service.store)])


@router.post("/groups", response_model=AccountOut, status_code=201)
def create_group(body: GroupIn, user: Caller, service: ServiceDep) -> AccountOut:
    """Create a group (409 if its name is taken)."""
    _admin(user)
    changes = {k: v for k, v in body.changes().items() if k != "name"}
    return _out(accounts.create_group(service.store, body.name, changes))


@router.patch("/groups/{name}", response_model=AccountOut)
def set_group(name: Name, body: LimitsIn, user: Caller, service: ServiceDep) -> AccountOut:
    """Change a group's limits or share."""
    _admin(user)
    return _out(accounts.set_group(service.store, name, body.changes()))


@router.delete("/groups/{name}", status_code=204)
def delete_group(name: Name, user: Caller, service: ServiceDep) -> None:
    """Delete a group; its members are left without one."""
    _admin(user)
    accounts.delete_group(service.store, name)
