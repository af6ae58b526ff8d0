"""Serving the API: `corral server` in the foreground, or a background thread for `corral demo` and tests."""

from __future__ import annotations

import logging
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import uvicorn

from corral.control.api import create_app
from corral.control.service import Service
from corral.errors import UserError

log = logging.getLogger("corral.server")


def check_port(host: str, port: int) -> None:
    """Refuse a port out of range or already taken, with one line."""
    if not 0 <= port <= 65535:
        raise UserError(f"--port must be between 0 and 65535, got {port}")
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise UserError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def check_tls(cert: Path | None, key: Path | None) -> None:
    """Refuse --tls-cert without --tls-key (or the reverse), a file that is missing or unreadable, and a key
    that does not match the certificate, with one line naming the option."""
    if (cert is None) != (key is None):
        raise UserError("--tls-cert and --tls-key go together: pass both (HTTPS) or neither (HTTP)")
    if cert is None or key is None:
        return
    for option, path in (("--tls-cert", cert), ("--tls-key", key)):
        if not path.is_file():
            raise UserError(f"{option}: {path} is not a file")
        try:
            path.open("rb").close()
        except OSError as exc:
            raise UserError(f"{option}: cannot read {path} ({exc.strerror or exc})") from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(str(cert), str(key))
    except ssl.SSLError as exc:
        reason = exc.reason or str(exc)
        if "KEY_VALUES_MISMATCH" in str(exc) or "key values mismatch" in str(exc):
            raise UserError(f"--tls-key: {key} is not the key of the certificate {cert}") from None
        raise UserError(
            f"--tls-cert/--tls-key: {cert} and {key} are not a PEM certificate and its private key ({reason})"
        ) from None


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_until_serving(url: str, proc: subprocess.Popen[bytes] | None = None, timeout: float = 60.0) -> bool:
    """Poll GET /api/v1/health until it answers 200; False once `proc` has exited or `timeout` passed."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/api/v1/health", timeout=1).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


class ServerThread:
    """The API served by uvicorn in a daemon thread of this process, with the scheduler loop running."""

    def __init__(self, service: Service, host: str = "127.0.0.1", port: int = 0) -> None:
        self.service = service
        self.host = host
        self.port = port or free_port(host)
        self.url = f"http://{host}:{self.port}"
        config = uvicorn.Config(
            create_app(service), host=host, port=self.port, log_level="warning", access_log=False, lifespan="off"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="corral-http", daemon=True)

    def start(self, timeout: float = 30.0) -> ServerThread:
        """Start serving and scheduling; return once the port accepts requests."""
        check_port(self.host, self.port)
        self.service.url = self.url
        self.service.start()
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the API server did not start on {self.url}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        """Stop serving and scheduling (runs in progress are left alone)."""
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.service.stop()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(service: Service, host: str, port: int, *, tls_cert: Path | None = None, tls_key: Path | None = None) -> None:
    """Serve in the foreground until SIGINT/SIGTERM (uvicorn handles both); HTTPS with `tls_cert` and `tls_key`."""
    check_port(host, port)
    check_tls(tls_cert, tls_key)
    scheme = "https" if tls_cert else "http"
    service.url = f"{scheme}://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"
    service.start()
    try:
        uvicorn.run(
            create_app(service),
            host=host,
            port=port,
            log_level="info",
            access_log=False,
            ssl_certfile=str(tls_cert) if tls_cert else None,
            ssl_keyfile=str(tls_key) if tls_key else None,
        )
    finally:
        service.stop()
