"""Bearer tokens: a short cache of token -> user, `current_user` (the `Caller` dependency), ownership checks,
and the check of a job's own token for the metrics it reports."""

import time
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from corral.control.store import Job, Store, User, hash_token

TOKEN_CACHE_S = 5.0
MAX_CACHED = 1000

bearer = HTTPBearer(auto_error=False)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


class TokenCache:
    """Token -> user, kept a few seconds: every request is authenticated, and a database read per
    request halves the submission rate on SQLite.

    The cache never keeps a token alive: the expiry stored with the user is checked on every hit,
    and a re-key or revoke through this service drops the user's entries (`forget`) at once. Only a
    change made by another process (another service on the same database) waits up to `ttl`."""

    def __init__(self, store: Store, ttl: float = TOKEN_CACHE_S) -> None:
        self.store = store
        self.ttl = ttl
        self._cache: dict[str, tuple[float, User]] = {}

    def lookup(self, token: str) -> User | None:
        """The user this token belongs to, or None (also when it expired: `authenticate` tells which)."""
        user = self._user(token)
        return None if user is None or expired(user) else user

    def authenticate(self, token: str) -> User:
        """The user this token belongs to; 401 "invalid token" or "token expired" otherwise."""
        user = self._user(token)
        if user is None:
            raise _unauthorized("invalid token")
        if expired(user):
            raise _unauthorized(f"token expired: ask an admin for a new one (`corral token create {user.name}`)")
        return user

    def forget(self, name: str) -> None:
        """Drop the cached tokens of user `name` (their token was re-keyed or revoked)."""
        for token in [t for t, (_, u) in list(self._cache.items()) if u.name == name]:
            self._cache.pop(token, None)

    def _user(self, token: str) -> User | None:
        now = time.monotonic()
        hit = self._cache.get(token)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        user = self.store.user_for_token(token)
        if user is not None:
            if len(self._cache) > MAX_CACHED:
                self._cache.clear()
            self._cache[token] = (now, user)
        return user


def expired(user: User, now: float | None = None) -> bool:
    """True once the user's token is past its expiry (wall-clock epoch seconds, as stored)."""
    return user.token_expires is not None and user.token_expires <= (time.time() if now is None else now)


def get_tokens(request: Request) -> TokenCache:
    """The token cache of the app serving this request (set by `create_app`)."""
    tokens: TokenCache = request.app.state.tokens
    return tokens


Tokens = Annotated[TokenCache, Depends(get_tokens)]


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(401, message, headers={"WWW-Authenticate": "Bearer"})


def current_user(cred: Credentials, tokens: Tokens) -> User:
    """The user whose bearer token came with the request; 401 without one or with an unknown one."""
    if cred is None or not cred.credentials:
        raise _unauthorized(
            "missing token: send 'Authorization: Bearer TOKEN' (the CLI reads --token, CORRAL_TOKEN or ~/.corral/token)"
        )
    return tokens.authenticate(cred.credentials)


Caller = Annotated[User, Depends(current_user)]


def require_owner(job: Job, user: User, action: str) -> None:
    """403 unless `user` owns the job or is an admin; `action` completes "only they or an admin may ..."."""
    if job.user != user.name and not user.is_admin:
        raise HTTPException(403, f"job {job.id} belongs to {job.user}; only they or an admin may {action}")


def require_token(cred: HTTPAuthorizationCredentials | None) -> str:
    """The bearer token of the request; 401 without one."""
    if cred is None or not cred.credentials:
        raise _unauthorized("missing token")
    return cred.credentials


def authorize_report(job: Job, token: str, tokens: TokenCache) -> None:
    """Metrics of a job come from its own CORRAL_JOB_TOKEN, or from a user who may act on it (owner, admin)."""
    if job.job_token_hash and hash_token(token) == job.job_token_hash:
        return
    require_owner(job, tokens.authenticate(token), "report its metrics")
