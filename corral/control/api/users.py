"""Users: who the caller is, and tokens for new (or re-keyed) users."""

from fastapi import APIRouter, HTTPException
from sqlalchemy.exc import IntegrityError

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
    after the other: the token of the later one is the valid one. A conflict on the name the store
    cannot settle is a 409 naming the user, never a 500.
    """
    if not user.is_admin:
        raise HTTPException(403, "only an admin may create tokens")
    try:
        token, is_admin = service.store.create_or_rekey_user(body.name, admin=body.admin)
    except IntegrityError:  # the store settles a race on a new name; one it could not settle is a conflict
        raise HTTPException(409, f"name: user {body.name!r} is being created by another request; try again") from None
    return TokenOut(name=body.name, token=token, admin=is_admin)
