"""Users: who the caller is, and tokens for new (or re-keyed) users."""

from fastapi import APIRouter, HTTPException

from corral.control.api.auth import Caller
from corral.control.api.deps import API, ServiceDep
from corral.control.api.models import TokenOut, UserIn, WhoAmI

router = APIRouter(prefix=API, tags=["users"])


@router.get("/whoami", response_model=WhoAmI)
def whoami(user: Caller) -> WhoAmI:
    """The user the token belongs to."""
    return WhoAmI(name=user.name, admin=user.is_admin)


@router.post("/users", response_model=TokenOut, status_code=201)
def create_user(body: UserIn, user: Caller, service: ServiceDep) -> TokenOut:
    """Create a user (or give an existing one a new token, which ends the old one). Admins only.

    `admin` in the answer is the user's as stored: re-keying an admin without `admin: true`
    leaves them an admin. Two requests for one new name at once both succeed, as if one came
    after the other: the token of the later one is the valid one.
    """
    if not user.is_admin:
        raise HTTPException(403, "only an admin may create tokens")
    token, is_admin = service.store.create_or_rekey_user(body.name, admin=body.admin)
    return TokenOut(name=body.name, token=token, admin=is_admin)
