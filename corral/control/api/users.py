"""Users: who the caller is, tokens for new (or re-keyed) users, and revoking a user's token."""

import time

from fastapi import APIRouter, HTTPException
from sqlalchemy.exc import IntegrityError

from corral.control.api.auth import Caller, Tokens
from corral.control.api.deps import API, ServiceDep
from corral.control.api.models import Revoked, TokenOut, UserIn, WhoAmI

router = APIRouter(prefix=API, tags=["users"])


@router.get("/whoami", response_model=WhoAmI)
def whoami(user: Caller) -> WhoAmI:
    """The user the token belongs to."""
    return WhoAmI(name=user.name, admin=user.is_admin)


@router.post("/users", response_model=TokenOut, status_code=201)
def create_user(body: UserIn, user: Caller, service: ServiceDep, tokens: Tokens) -> TokenOut:
    """Create a user (or give an existing one a new token, which ends the old one). Admins only.

    `expires_in` (seconds) makes the new token stop working that long from now (401 "token
    expired"); without it the token never expires.

    `admin` in the answer is the user's as stored: re-keying an admin without `admin: true`
    leaves them an admin. Two requests for one new name at once both succeed, as if one came
    after the other: the token of the later one is the valid one. A conflict on the name the store
    cannot settle is a 409 naming the user, never a 500.
    """
    if not user.is_admin:
        raise HTTPException(403, "only an admin may create tokens")
    expires = None if body.expires_in is None else time.time() + body.expires_in
    try:
        token, is_admin = service.store.create_or_rekey_user(body.name, admin=body.admin, expires=expires)
    except IntegrityError:  # the store settles a race on a new name; one it could not settle is a conflict
        raise HTTPException(409, f"name: user {body.name!r} is being created by another request; try again") from None
    tokens.forget(body.name)  # the old token ends now, not when its cache entry would have
    return TokenOut(name=body.name, token=token, admin=is_admin, expires=expires)


@router.post("/users/{name}/revoke", response_model=Revoked)
def revoke_token(name: str, user: Caller, service: ServiceDep, tokens: Tokens) -> Revoked:
    """End user `name`'s token at once (401 for it from the next request on). An admin, or the user themself.

    No token works for them afterwards until an admin creates a new one. The last admin's token
    cannot be revoked (nobody could create tokens any more): 409.
    """
    if name != user.name and not user.is_admin:
        raise HTTPException(403, "only an admin may revoke another user's token")
    target = service.store.get_user(name)
    if target is None:
        raise HTTPException(404, f"name: no user {name!r}")
    if target.is_admin and service.store.admins() == [name]:
        raise HTTPException(409, f"name: {name!r} is the only admin; make another admin before revoking this token")
    service.store.revoke_token(name)
    tokens.forget(name)
    return Revoked(name=name)
