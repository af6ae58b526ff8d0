"""A typed HTTP client of the corral API: one method per route, every failure a one-line UserError."""

from __future__ import annotations

import codecs
import os
import ssl
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from corral.errors import UserError

DEFAULT_SERVER = "http://127.0.0.1:8765"
API = "/api/v1"
TIMEOUT = 30.0
FOLLOW_RETRIES = 5  # reconnects of a followed log after the connection drops


def client_home() -> Path:
    """CORRAL_HOME, else ~/.corral (not created: the client only reads it)."""
    return Path(os.environ.get("CORRAL_HOME") or Path.home() / ".corral")


def resolve_server(server: str | None = None) -> str:
    """--server, else CORRAL_SERVER, else the default local address; UserError naming the source when the
    URL is malformed (no host, a port outside 1..65535, not http(s), characters a URL cannot hold)."""
    source = "--server" if server else "CORRAL_SERVER" if os.environ.get("CORRAL_SERVER") else "the default server"
    url = (server or os.environ.get("CORRAL_SERVER") or DEFAULT_SERVER).strip()
    if "://" not in url:
        url = "http://" + url
    url = url.rstrip("/")
    check_server_url(url, source)
    return url


def check_server_url(url: str, source: str = "--server") -> None:
    """UserError naming `source` unless `url` is an http(s) URL with a host and a valid port."""
    from urllib.parse import urlsplit

    def bad(why: str) -> UserError:
        return UserError(f"{source}: {url!r} {why} (expected http://HOST:PORT or https://HOST:PORT)")

    if not url.isprintable() or any(c.isspace() for c in url):
        raise bad("is not a valid URL: it holds spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        port_error = "port" in str(exc).lower()
        raise bad(
            "has a port that is not an integer in 1..65535" if port_error else f"is not a valid URL ({exc})"
        ) from None
    if parts.scheme not in ("http", "https"):
        raise bad("must start with http:// or https://")
    if not parts.hostname:
        raise bad("has no host")
    if port is not None and not 1 <= port <= 65535:
        raise bad("has a port that is not an integer in 1..65535")
    try:
        httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise bad(f"is not a valid URL ({exc})") from None


def check_token(token: str, source: str) -> str:
    """The token, unless it holds characters an HTTP header cannot carry (the token itself is never shown)."""
    if not token.isascii():
        raise UserError(f"{source}: the token holds non-ASCII characters; corral tokens are ASCII, copy it again")
    if not token.isprintable() or any(c.isspace() for c in token):
        raise UserError(f"{source}: the token holds spaces or control characters; corral tokens have none")
    return token


def resolve_token(token: str | None = None) -> str:
    """--token, else CORRAL_TOKEN, else the file $CORRAL_HOME/token; UserError naming the three when none is set,
    or naming the one whose token is malformed."""
    if token:
        return check_token(token.strip(), "--token")
    if os.environ.get("CORRAL_TOKEN", "").strip():
        return check_token(os.environ["CORRAL_TOKEN"].strip(), "CORRAL_TOKEN")
    path = client_home() / "token"
    try:
        text = path.read_bytes().decode("utf-8-sig").strip()
    except UnicodeDecodeError:
        raise UserError(f"{path}: the token file is not UTF-8 text; write the token there again") from None
    except OSError:
        text = ""
    if not text:
        raise UserError(
            f"no token: pass --token TOKEN, set CORRAL_TOKEN, or write it to {path} "
            "(an admin creates one with `corral token create NAME`)"
        )
    return check_token(text, str(path))


def resolve_ca_cert(ca_cert: str | Path | None = None) -> str | None:
    """--ca-cert, else CORRAL_CA_CERT, else None (the system store); UserError naming the source when the
    file cannot be read or holds no PEM certificate."""
    source = "--ca-cert" if ca_cert else "CORRAL_CA_CERT"
    path = str(ca_cert or os.environ.get("CORRAL_CA_CERT", "")).strip()
    if not path:
        return None
    tls_context(path, source)
    return path


def tls_context(ca_cert: str | None, source: str = "--ca-cert") -> ssl.SSLContext:
    """A context that verifies servers against `ca_cert` (a PEM file of CA certificates), else the system
    store; UserError naming `source` when the file is missing, unreadable or not PEM certificates."""
    if not ca_cert:
        return ssl.create_default_context()
    p = Path(ca_cert).expanduser()
    if not p.is_file():
        raise UserError(f"{source}: {ca_cert} is not a file")
    try:
        return ssl.create_default_context(cafile=str(p))
    except ssl.SSLError:  # (an OSError too: first)
        raise UserError(f"{source}: {ca_cert} holds no PEM certificate") from None
    except OSError as exc:
        raise UserError(f"{source}: cannot read {ca_cert} ({exc.strerror or exc})") from None


def tls_failure(exc: BaseException) -> str | None:
    """Why a TLS handshake failed, if `exc` (or what it wraps) is a TLS error; None for any other failure."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ssl.SSLCertVerificationError):
            return f"its certificate is not trusted ({cur.verify_message or cur.reason})"
        if isinstance(cur, ssl.SSLError):
            return f"the TLS handshake failed ({cur.reason or cur})"
        cur = cur.__cause__ or cur.__context__
    text = str(exc)
    if "CERTIFICATE_VERIFY_FAILED" in text:  # the ssl error's text only (some transports keep no cause)
        return f"its certificate is not trusted ({text.split('] ', 1)[-1]})"
    return None


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
        why = tls_failure(exc) if exc is not None else None
        if why is not None:
            return UserError(
                f"cannot connect securely to the corral server at {self.server}: {why}; "
                "pass --ca-cert FILE or set CORRAL_CA_CERT to the CA that signed its certificate"
            )
        return UserError(
            f"cannot reach the corral server at {self.server}: start it with `corral server` "
            "or set --server/CORRAL_SERVER"
        )

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
    if not resp.is_error:
        return
    detail = ""
    try:
        body = resp.json()
        if isinstance(body, dict):
            detail = body.get("detail", "")
            if not isinstance(detail, str):  # a validation error list from a non-corral route
                detail = str(detail)
    except ValueError:
        detail = resp.text.strip().splitlines()[0] if resp.text.strip() else ""
    detail = " ".join(detail.split()) or f"HTTP {resp.status_code} {resp.reason_phrase}"
    if resp.status_code == 401 and detail == "invalid token":
        detail = f"invalid token for {server}: check --token, CORRAL_TOKEN or {client_home() / 'token'}"
    elif resp.status_code >= 500:
        detail = f"the corral server at {server} failed ({resp.status_code}): {detail}"
    raise UserError(detail)
