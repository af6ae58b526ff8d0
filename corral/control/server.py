"""Serving the API: `corral server` in the foreground, or a background thread for `corral demo` and tests."""

from __future__ import annotations

import logging
import socket
import subprocess
import threading
import time

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


def serve(service: Service, host: str, port: int) -> None:
    """Serve in the foreground until SIGINT/SIGTERM (uvicorn handles both)."""
    check_port(host, port)
    service.url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"
    service.start()
    try:
        uvicorn.run(create_app(service), host=host, port=port, log_level="info", access_log=False)
    finally:
        service.stop()
