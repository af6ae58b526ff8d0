"""A throwaway PostgreSQL server for tests: one per session, a fresh database per test.

As root (CI, this machine) initdb and pg_ctl refuse to run, so they run as the `postgres`
user (`runuser`) in a folder under /tmp that user owns. fsync and friends are off: the data
dies with the session. See ../shared/POSTGRES-NOTES.md.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from corral.control.server import free_port

USER = "corral"  # the server's superuser, trusted on 127.0.0.1 (no password)


def in_ci() -> bool:
    """True under CI (CI=true), where PostgreSQL tests must run, never skip."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def bin_dir() -> Path | None:
    """The newest /usr/lib/postgresql/*/bin holding initdb and pg_ctl (Debian's layout), else PATH's."""
    found = sorted(
        (Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")),
        key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0,
    )
    if found:
        return found[-1]
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


class PostgresServer:
    """A PostgreSQL server in a temporary folder on a free 127.0.0.1 port."""

    def __init__(self) -> None:
        bindir = bin_dir()
        if bindir is None:
            raise RuntimeError("no initdb under /usr/lib/postgresql/*/bin or on PATH (`make` installs postgresql)")
        self.bin = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="corral-pg-", dir="/tmp"))  # not tmp_path: that one is 0700 root
        self.dir.chmod(0o755)
        self.as_postgres: list[str] = []
        if os.geteuid() == 0:  # initdb refuses root: run the server as the postgres user
            shutil.chown(self.dir, "postgres", "postgres")
            self.as_postgres = ["runuser", "-u", "postgres", "--"]
        self.data = self.dir / "data"
        self.port = 0
        self._admin = None
        try:
            self._run("initdb", "-D", str(self.data), "-U", USER, "--auth=trust", "-E", "UTF8", "--no-sync")
            self._start()
        except BaseException:
            self.stop()
            raise

    def _run(self, tool: str, *args: str) -> None:
        cmd = [*self.as_postgres, str(self.bin / tool), *args]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if res.returncode != 0:
            log = self.dir / "log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{tool} failed ({res.returncode}): {res.stdout[-1000:]}{res.stderr[-1000:]}{tail}")

    def _start(self) -> None:
        for attempt in range(3):  # the free port may be taken between the probe and the bind
            self.port = free_port()
            opts = (
                f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir} -c max_connections=300"
                " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            )
            try:
                self._run("pg_ctl", "-D", str(self.data), "-l", str(self.dir / "log"), "-w", "-o", opts, "start")
                return
            except RuntimeError:
                if attempt == 2:
                    raise

    def url(self, database: str = "postgres") -> str:
        """The SQLAlchemy URL of `database` on this server."""
        return f"postgresql+psycopg://{USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; returns its name."""
        name = f"t_{uuid.uuid4().hex[:16]}"
        self._execute(f'CREATE DATABASE "{name}"')
        return name

    def _execute(self, sql: str) -> None:
        import psycopg

        if self._admin is None or self._admin.closed:
            self._admin = psycopg.connect(f"postgresql://{USER}@127.0.0.1:{self.port}/postgres", autocommit=True)
        if sql.startswith("CREATE DATABASE") and self._admin.info.server_version >= 150000:
            sql += " STRATEGY = FILE_COPY"  # 10x faster than 15's default (WAL_LOG) for a small database
        self._admin.execute(sql)

    def drop_database(self, name: str) -> None:
        """Drop `name`, closing any connection a test left open to it."""
        self._execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        """Stop the server at once (its data is thrown away) and remove its folder."""
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        if (self.data / "postmaster.pid").exists():
            subprocess.run(
                [*self.as_postgres, str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"],
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(self.dir, ignore_errors=True)
