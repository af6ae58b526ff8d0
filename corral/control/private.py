"""The service's home is private to its owner: folders 0700, files 0600.

The home holds the database (every job's env, token hashes), job folders, logs and checkpoints.
The root-cause fix is the process umask: `private_umask` sets 0o077 in the process that hosts a
`Service` (`corral server`, `corral demo`, a test's in-process server), so whatever it creates, and
every run the local executor starts (children inherit the umask), is created private: SQLite makes
the database file 0600 and its -wal/-shm files copy the database's mode. `tighten` repairs a home
made before (or by something else): it strips group/other bits from everything under it.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger("corral.service")

PRIVATE_UMASK = 0o077
OPEN_BITS = stat.S_IRWXG | stat.S_IRWXO  # what others may have, and must not


def private_umask() -> None:
    """Make this process create files 0600 and folders 0700 from now on (a tighter umask is kept)."""
    old = os.umask(PRIVATE_UMASK)
    os.umask(old | PRIVATE_UMASK)


def tighten(home: Path) -> int:
    """Strip group/other permission bits from `home` and everything under it (symlinks are left alone, not
    followed); return how many entries changed, after logging one line when any did."""
    changed = 0

    def fix(path: str) -> None:
        nonlocal changed
        try:
            st = os.lstat(path)
        except OSError:  # gone meanwhile (a run's files come and go)
            return
        if stat.S_ISLNK(st.st_mode) or not st.st_mode & OPEN_BITS:
            return
        try:
            os.chmod(path, stat.S_IMODE(st.st_mode) & ~OPEN_BITS)
            changed += 1
        except OSError as exc:  # not ours (another user's file in our home): say so, do not stop
            log.warning("cannot make %s private: %s", path, exc.strerror or exc)

    fix(str(home))
    for root, dirs, files in os.walk(home):
        for name in dirs + files:
            fix(os.path.join(root, name))
    if changed:
        log.warning("made %d files and folders under %s private to their owner (others could read them)", changed, home)
    return changed
