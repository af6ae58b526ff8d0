"""A typed HTTP client of the corral API: one method per route, every failure a one-line UserError."""

from __future__ import annotations

import codecs
import ssl
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from corral.control import endpoint
from corral.control.endpoint import API as API
from corral.control.endpoint import DEFAULT_SERVER as DEFAULT_SERVER
from corral.control.endpoint import TIMEOUT as TIMEOUT
from corral.control.endpoint import bad_server_url
from corral.control.endpoint import check_token as check_token
from corral.control.endpoint import client_home as client_home
from corral.control.endpoint import resolve_ca_cert as resolve_ca_cert
from corral.control.endpoint import resolve_token as resolve_token
from corral.control.endpoint import tls_context as tls_context
from corral.control.endpoint import tls_failure as tls_failure
from corral.errors import UserError

FOLLOW_RETRIES = 5  # reconnects of a followed log after the connection drops


def resolve_server(server: str | None = None) -> str:
    """--server, else CORRAL_SERVER, else the default local address (corral.control.endpoint's rules), checked
    also as httpx reads URLs; UserError naming the source when the URL is malformed."""
    return endpoint.resolve_server(server, check=check_server_url)


def check_server_url(url: str, source: str = "--server") -> None:
    """UserError naming `source` unless `url` is an http(s) URL with a host and a valid port that httpx takes."""
    endpoint.check_server_url(url, source)
    try:
        httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise bad_server_url(url, source, f"is not a valid URL ({exc})") from None


class Client:
    """The corral API over HTTP with a bearer token; https servers are verified against `ca_cert` (a PEM file of
    CA certificates), else the system store."""

    def __init__(self, server: str, token: str, *, timeout: float = TIMEOUT, ca_cert: str | None = None) -> None:
        self.server = server.rstrip("/")
        # Plain http needs no TLS context (loading the CA bundle costs tens of milliseconds).
        verify: ssl.SSLContext | bool = False
        if self.server.startswith("https://"):
            verify = tls_context(ca_cert)
        self._http = httpx.Client(
            base_url=self.server + API,
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
            verify=verify,
        )

    @classmethod
    def from_options(
        cls, server: str | None = None, token: str | None = None, ca_cert: str | Path | None = None
    ) -> Client:
        """A client for --server/--token/--ca-cert, falling back to the environment and $CORRAL_HOME/token."""
        return cls(resolve_server(server), resolve_token(token), ca_cert=resolve_ca_cert(ca_cert))

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing --------------------------------------------------------------

    def _unreachable(self, exc: BaseException | None = None) -> UserError:
        return endpoint.unreachable_error(self.server, exc)

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            resp = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        _raise_for_status(resp, self.server)
        return resp

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        resp = self._request(method, path, **kwargs)
        try:
            return resp.json()
        except ValueError:
            raise UserError(
                f"the server at {self.server} answered {path} with something that is not JSON; is it a corral server?"
            ) from None

    # -- routes ----------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """GET /health: status and version (no token needed)."""
        return dict(self._json("GET", "/health"))

    def whoami(self) -> dict[str, Any]:
        """The caller's name and whether they are an admin."""
        return dict(self._json("GET", "/whoami"))

    def create_user(self, name: str, admin: bool = False, expires_in: float | None = None) -> dict[str, Any]:
        """Create a user (or re-key one); returns {name, token, admin, expires}. Admins only.

        `expires_in`: seconds until the token stops working (None: never)."""
        body: dict[str, Any] = {"name": name, "admin": admin}
        if expires_in is not None:
            body["expires_in"] = expires_in
        return dict(self._json("POST", "/users", json=body))

    def revoke_token(self, name: str) -> dict[str, Any]:
        """End user `name`'s token at once (an admin, or the user themself)."""
        return dict(self._json("POST", f"/users/{name}/revoke"))

    def submit(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Queue a job from a spec mapping; returns the job."""
        return dict(self._json("POST", "/jobs", json=spec))

    def jobs(
        self, states: Sequence[str] | None = None, user: str | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Jobs, newest first, filtered by state and user."""
        params: list[tuple[str, str | int]] = [("state", s) for s in states or ()]
        if user:
            params.append(("user", user))
        if limit is not None:
            params.append(("limit", limit))
        return list(self._json("GET", "/jobs", params=params)["jobs"])

    def job(self, job_id: int) -> dict[str, Any]:
        """One job."""
        return dict(self._json("GET", f"/jobs/{job_id}"))

    def cancel(self, job_id: int) -> dict[str, Any]:
        """Cancel a job; returns it as it is now."""
        return dict(self._json("POST", f"/jobs/{job_id}/cancel"))

    def cancel_many(self, **selection: Any) -> list[int]:
        """Cancel jobs by ids and/or filters (user, state, name, array) in one request; the ids cancelled."""
        body = {k: v for k, v in selection.items() if v not in (None, [], ())}
        return list(self._json("POST", "/jobs/cancel", json=body)["cancelled"])

    def accounts(self, kind: str) -> list[dict[str, Any]]:
        """Users or groups (kind: "users" | "groups") with their limits and shares (admins)."""
        return list(self._json("GET", f"/{kind}")["items"])

    def set_account(self, kind: str, name: str, changes: dict[str, Any]) -> dict[str, Any]:
        """Change a user's or group's limits, share (or a user's group)."""
        return dict(self._json("PATCH", f"/{kind}/{quote(name, safe='')}", json=changes))

    def create_group(self, name: str, changes: dict[str, Any]) -> dict[str, Any]:
        """Create a group with these limits and share."""
        return dict(self._json("POST", "/groups", json={"name": name, **changes}))

    def delete_group(self, name: str) -> None:
        """Delete a group."""
        self._request("DELETE", f"/groups/{quote(name, safe='')}")

    def submit_batch(self, specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Queue several jobs at once, all or none."""
        return list(self._json("POST", "/jobs/batch", json={"jobs": specs})["jobs"])

    def events(self, job_id: int) -> list[dict[str, Any]]:
        """A job's state transitions, oldest first."""
        return list(self._json("GET", f"/jobs/{job_id}/events")["events"])

    def metrics(self, job_id: int) -> list[dict[str, Any]]:
        """Metrics a job reported, oldest first."""
        return list(self._json("GET", f"/jobs/{job_id}/metrics")["metrics"])

    def cluster(self) -> dict[str, Any]:
        """Devices, the job on each, the policy and queue sizes."""
        return dict(self._json("GET", "/cluster"))

    def logs(self, job_id: int, rank: int | None = None, offset: int = 0) -> tuple[str, int]:
        """Log text from byte `offset` (up to what the server sends at once) and the offset after it."""
        params: dict[str, int] = {"offset": offset}
        if rank is not None:
            params["rank"] = rank
        resp = self._request("GET", f"/jobs/{job_id}/logs", params=params)
        end = int(resp.headers.get("X-Corral-Offset", offset + len(resp.content)))
        return resp.content.decode(errors="replace"), end

    def all_logs(self, job_id: int, rank: int | None = None) -> Iterator[str]:
        """The whole log as it is now, in the pieces the server sends."""
        offset = 0
        while True:
            text, end = self.logs(job_id, rank, offset)
            if end <= offset:
                return
            yield text
            offset = end

    def follow_logs(self, job_id: int, rank: int | None = None) -> Iterator[str]:
        """Log text as it is written, until the job ends; reconnects from the last byte if the stream drops."""
        params: dict[str, Any] = {"follow": "true"}
        if rank is not None:
            params["rank"] = rank
        offset, retries = 0, 0
        # A quiet job sends nothing for a long time: no read timeout on the stream.
        timeout = httpx.Timeout(TIMEOUT, read=None)
        while True:
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            try:
                with self._http.stream(
                    "GET", f"/jobs/{job_id}/logs", params={**params, "offset": offset}, timeout=timeout
                ) as resp:
                    if resp.is_error:
                        resp.read()
                        _raise_for_status(resp, self.server)
                    for chunk in resp.iter_bytes():
                        offset += len(chunk)
                        retries = 0
                        text = decoder.decode(chunk)
                        if text:
                            yield text
                    tail = decoder.decode(b"", final=True)
                    if tail:
                        yield tail
                    return
            except httpx.ConnectError as exc:
                raise self._unreachable(exc) from None
            except httpx.TransportError:
                # The server streams whole lines, so resuming at `offset` repeats and loses nothing.
                retries += 1
                if retries > FOLLOW_RETRIES:
                    raise UserError(
                        f"lost the log stream of job {job_id} from {self.server}; run `corral logs {job_id}` again"
                    ) from None


def _raise_for_status(resp: httpx.Response, server: str) -> None:
    """A 4xx/5xx answer as a UserError carrying the server's one-line detail."""
    if resp.is_error:
        raise UserError(endpoint.error_detail(resp.status_code, resp.content, server))
