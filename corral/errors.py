"""The one exception type for mistakes a user can fix (bad input, missing file, busy port)."""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix; the CLI prints its message on one line and exits 2."""

    exit_code = 2


def one_line(text: str) -> str:
    """`text` as one printable line: newlines, other control characters and lone surrogates become escapes
    (a field name or a path a user typed may hold any of them)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
