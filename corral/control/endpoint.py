"""Where the corral service is and how a client proves who it is: server URL, token, CA file, and the one
line a failed answer becomes.

Standard library only, so that `corral submit`'s fast path (corral.control.submit_fast) and the httpx
client (corral.control.client) share one set of rules without the fast path importing httpx.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from corral.errors import UserError

if TYPE_CHECKING:
    import ssl

DEFAULT_SERVER = "http://127.0.0.1:8765"
API = "/api/v1"
TIMEOUT = 30.0


def client_home() -> Path:
    """CORRAL_HOME, else ~/.corral (not created: the client only reads it)."""
    return Path(os.environ.get("CORRAL_HOME") or Path.home() / ".corral")


def resolve_server(server: str | None = None, check: Callable[[str, str], None] | None = None) -> str:
    """--server, else CORRAL_SERVER, else the default local address; UserError naming the source when the
    URL is malformed (no host, a port outside 1..65535, not http(s), characters a URL cannot hold).

    `check(url, source)` validates the URL (default: check_server_url)."""
    source = "--server" if server else "CORRAL_SERVER" if os.environ.get("CORRAL_SERVER") else "the default server"
    url = (server or os.environ.get("CORRAL_SERVER") or DEFAULT_SERVER).strip()
    if "://" not in url:
        url = "http://" + url
    url = url.rstrip("/")
    (check or check_server_url)(url, source)
    return url


def bad_server_url(url: str, source: str, why: str) -> UserError:
    """The one line for a malformed server URL, naming where it came from."""
    return UserError(f"{source}: {url!r} {why} (expected http://HOST:PORT or https://HOST:PORT)")


def check_server_url(url: str, source: str = "--server") -> None:
    """UserError naming `source` unless `url` is an http(s) URL with a host and a valid port."""
    from urllib.parse import urlsplit

    if not url.isprintable() or any(c.isspace() for c in url):
        raise bad_server_url(url, source, "is not a valid URL: it holds spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        why = "has a port that is not an integer in 1..65535" if "port" in str(exc).lower() else ""
        raise bad_server_url(url, source, why or f"is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise bad_server_url(url, source, "must start with http:// or https://")
    if not parts.hostname:
        raise bad_server_url(url, source, "has no host")
    if port is not None and not 1 <= port <= 65535:
        raise bad_server_url(url, source, "has a port that is not an integer in 1..65535")


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
    import ssl

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
    import ssl

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


def unreachable_error(server: str, exc: BaseException | None = None) -> UserError:
    """The one line for a server that cannot be reached (or not securely: `exc` a TLS failure)."""
    why = tls_failure(exc) if exc is not None else None
    if why is not None:
        return UserError(
            f"cannot connect securely to the corral server at {server}: {why}; "
            "pass --ca-cert FILE or set CORRAL_CA_CERT to the CA that signed its certificate"
        )
    return UserError(
        f"cannot reach the corral server at {server}: start it with `corral server` or set --server/CORRAL_SERVER"
    )


def error_detail(status: int, content: bytes, server: str) -> str:
    """The one line a 4xx/5xx answer becomes: the server's `detail`, or its first line of text."""
    import json
    from http import HTTPStatus

    detail = ""
    try:
        body = json.loads(content)
        if isinstance(body, dict):
            detail = body.get("detail", "")
            if not isinstance(detail, str):  # a validation error list from a non-corral route
                detail = str(detail)
    except ValueError:
        text = content.decode("utf-8", errors="replace").strip()
        detail = text.splitlines()[0] if text else ""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    detail = " ".join(detail.split()) or f"HTTP {status} {phrase}"
    if status == 401 and detail == "invalid token":
        detail = f"invalid token for {server}: check --token, CORRAL_TOKEN or {client_home() / 'token'}"
    elif status >= 500:
        detail = f"the corral server at {server} failed ({status}): {detail}"
    return detail
