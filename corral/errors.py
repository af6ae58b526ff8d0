"""The one exception type for mistakes a user can fix (bad input, missing file, busy port)."""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix; the CLI prints its message on one line and exits 2."""

    exit_code = 2
