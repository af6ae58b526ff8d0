"""Reading trace files row by row, with errors that name the file, line and column."""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from corral.errors import UserError


def open_text(path: Path) -> list[str]:
    """The lines of a text file; a missing, unreadable or binary file is a UserError."""
    try:
        with path.open("r", encoding="utf-8", newline="") as f:
            return f.read().splitlines()
    except FileNotFoundError:
        raise UserError(f"trace file not found: {path}") from None
    except IsADirectoryError:
        raise UserError(f"trace file is a directory: {path}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a UTF-8 text file") from None
    except OSError as exc:
        raise UserError(f"cannot read trace file {path}: {exc.strerror}") from None


def csv_rows(path: Path, lines: list[str]) -> tuple[list[str], Iterator[tuple[int, dict[str, str]]]]:
    """The header of a CSV file and its (line number, row) pairs; blank lines are skipped."""
    if not lines or not lines[0].strip():
        raise UserError(f"{path} line 1: expected a header row, got an empty line")
    header = [h.strip() for h in next(csv.reader([lines[0]]))]

    def rows() -> Iterator[tuple[int, dict[str, str]]]:
        for lineno, line in enumerate(lines[1:], start=2):
            if not line.strip():
                continue
            fields = next(csv.reader([line]))
            if len(fields) != len(header):
                raise UserError(
                    f"{path} line {lineno}: expected {len(header)} fields ({','.join(header)}), got {len(fields)}"
                )
            yield lineno, dict(zip(header, (f.strip() for f in fields), strict=True))

    return header, rows()


def where(path: Path | str, line: int, column: str) -> str:
    """`file line N, column 'c'`: the prefix of every field error."""
    return f"{path} line {line}, column '{column}'"


def parse_int(text: str, at: str, *, minimum: int | None = None) -> int:
    """`text` as an integer >= minimum (floats with no fraction, like '4.0', are accepted)."""
    what = "a positive integer" if minimum == 1 else "a non-negative integer" if minimum == 0 else "an integer"
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"{at}: expected {what}, got {text!r}") from None
    if not math.isfinite(value) or value != int(value) or (minimum is not None and value < minimum):
        raise UserError(f"{at}: expected {what}, got {text!r}")
    return int(value)


def parse_float(text: str, at: str, *, positive: bool = False) -> float:
    """`text` as a finite number, >= 0 (or > 0 when `positive`)."""
    what = "a positive number" if positive else "a non-negative number"
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"{at}: expected {what}, got {text!r}") from None
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise UserError(f"{at}: expected {what}, got {text!r}")
    return value


def parse_timestamp(text: str, at: str) -> float:
    """A 'YYYY-mm-dd HH:MM:SS' timestamp as POSIX seconds (UTC)."""
    try:
        return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()
    except ValueError:
        raise UserError(f"{at}: expected a timestamp like 2017-10-09 07:01:55, got {text!r}") from None
