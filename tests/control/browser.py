"""Find Debian's Chromium for the browser tests, installing it with apt when it is missing."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
LOCK = Path("/tmp/corral-chromium-install.lock")
APT_TIMEOUT = 900  # seconds; a cold install downloads ~100 MB


def _apt(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    return subprocess.run(["apt-get", *args], capture_output=True, text=True, env=env, timeout=APT_TIMEOUT)


def _install() -> str:
    """Install Debian's chromium package; return what went wrong ("" when it went well)."""
    if shutil.which("apt-get") is None:
        return "apt-get is not available on this machine"
    install = ("install", "-y", "--no-install-recommends", "chromium")
    done = _apt(*install)
    if done.returncode != 0:
        # A fresh machine often has no package lists yet ("Unable to locate package").
        update = _apt("update")
        if update.returncode != 0:
            return f"apt-get update failed: {_last_line(update.stderr or update.stdout)}"
        done = _apt(*install)
    if done.returncode != 0:
        return f"apt-get install chromium failed: {_last_line(done.stderr or done.stdout)}"
    return ""


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def chromium_path() -> str:
    """Path of a Chromium executable (/usr/bin/chromium), installed with apt-get if missing."""
    override = os.environ.get("CORRAL_CHROMIUM")
    if override:
        return override
    if CHROMIUM.exists():
        return str(CHROMIUM)
    # One installer at a time: parallel test workers would fight over dpkg's lock.
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if CHROMIUM.exists():  # another process installed it while we waited
                return str(CHROMIUM)
            problem = _install()
        except (OSError, subprocess.TimeoutExpired) as exc:
            problem = f"could not run apt-get: {exc}"
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    if not CHROMIUM.exists():
        raise RuntimeError(
            f"Chromium is needed for the dashboard test and could not be installed "
            f"({problem or 'apt-get succeeded but ' + str(CHROMIUM) + ' is missing'}); "
            f"run `apt-get install -y --no-install-recommends chromium` as root "
            f"or set CORRAL_CHROMIUM to a Chromium executable"
        )
    return str(CHROMIUM)
