"""One run of a job under the local executor: `corral run` in-process, then its exit code to a file.

    python -m corral.control.runner EXIT_FILE -- corral-run-args...

The executor starts this in its own session, so the run outlives a crash of
the service; the exit file tells the restarted service how the run ended even
though it is no longer the run's parent.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from corral.runtime.commands import run_main


def write_exit_code(path: Path, code: int) -> None:
    """Write `code` to `path` atomically (temp file + rename)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{code}\n")
    os.replace(tmp, path)


def main(argv: list[str]) -> int:
    """Run `corral run ARGS` and record its exit code."""
    exit_file = Path(argv[0])
    args = argv[2:] if len(argv) > 1 and argv[1] == "--" else argv[1:]
    try:
        code = run_main(args)
    except BaseException:  # record a crash of the launcher itself as a failure
        write_exit_code(exit_file, 1)
        raise
    write_exit_code(exit_file, code)
    return code


if __name__ == "__main__":  # pragma: no cover
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    # The gang has ended and its exit code is written: leave now, even while the launcher's thread is still
    # importing torch for a store nobody will use (a job shorter than that import), not when it is done.
    os._exit(code)
