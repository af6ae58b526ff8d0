"""The job spec a user submits (YAML or JSON), validated at the edge by pydantic; errors name the field."""

from __future__ import annotations

import json
import math
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from corral.control.arrays import MAX_ARRAY, MAX_DEPENDENCIES, parse_range
from corral.errors import UserError


def _text(value: str) -> str:
    """A string that can reach a command line, a path or an environment: no NUL, valid Unicode."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (it holds a lone surrogate)") from None
    return value


def _env_name(value: str) -> str:
    _text(value)
    if not value or "=" in value:
        raise ValueError(f"{value!r} is not an environment variable name (empty, or holds '=')")
    return value


Text = Annotated[str, AfterValidator(_text)]
EnvName = Annotated[str, AfterValidator(_env_name)]


class Resources(BaseModel):
    """Devices the job needs: a rigid count, or an elastic range [min_gpus, max_gpus]."""

    model_config = ConfigDict(extra="forbid")

    gpus: int | None = Field(default=None, ge=1, le=4096)
    min_gpus: int | None = Field(default=None, ge=1, le=4096)
    max_gpus: int | None = Field(default=None, ge=1, le=4096)

    @model_validator(mode="after")
    def _consistent(self) -> Resources:
        # gpus alone: rigid. A range alone: elastic from min_gpus (default 1) to
        # max_gpus (default min_gpus), asking for the most it can use.
        hi = self.max_gpus if self.max_gpus is not None else max(self.gpus or 1, self.min_gpus or 1)
        lo = self.min_gpus if self.min_gpus is not None else min(self.gpus or 1, hi) if self.gpus else 1
        if lo > hi:
            raise ValueError(f"min_gpus ({lo}) must be <= max_gpus ({hi})")
        gpus = self.gpus if self.gpus is not None else hi
        if not lo <= gpus <= hi:
            raise ValueError(f"gpus ({gpus}) must lie within [min_gpus, max_gpus] = [{lo}, {hi}]")
        self.gpus, self.min_gpus, self.max_gpus = gpus, lo, hi
        return self


class ArrayValues(BaseModel):
    """An array over listed values: element i gets CORRAL_ARRAY_INDEX=i and CORRAL_ARRAY_VALUE=values[i]."""

    model_config = ConfigDict(extra="forbid")

    values: list[Any] = Field(min_length=1, max_length=MAX_ARRAY)

    @field_validator("values")
    @classmethod
    def _scalars(cls, values: list[Any]) -> list[Any]:
        for i, v in enumerate(values):
            if isinstance(v, str):
                try:
                    _text(v)
                except ValueError as exc:
                    raise ValueError(f"value {i} {exc}") from None
            elif isinstance(v, float) and not math.isfinite(v):
                raise ValueError(f"value {i} is {v}: values must be finite numbers")
            elif not isinstance(v, bool | int | float):
                raise ValueError(f"value {i} is a {type(v).__name__}: values are strings, numbers or booleans")
        return values


class JobSpec(BaseModel):
    """A training job: what to run, where, with which environment and resources."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    entrypoint: Text = Field(
        validation_alias=AliasChoices("entrypoint", "run"),
        min_length=1,
        description="Command line, e.g. `python train.py --lr 0.1`",
    )
    workdir: Text | None = None
    env: dict[EnvName, Text] = Field(default_factory=dict)
    resources: Resources = Field(default_factory=Resources)
    priority: int = Field(default=0, ge=-1000, le=1000)
    max_restarts: int = Field(default=0, ge=0, le=100)
    # allow_inf_nan=False: YAML (.nan, .inf) and Python's JSON (NaN, Infinity) both parse them.
    timeout: float | None = Field(
        default=None, gt=0, allow_inf_nan=False, description="Seconds of running time before it is stopped"
    )
    duration_estimate: float | None = Field(
        default=None, gt=0, allow_inf_nan=False, description="Seconds alone at `gpus`, for srtf/backfill"
    )
    preemptible: bool = True
    depends_on: list[Annotated[int, Field(ge=1, le=2**62)]] = Field(
        default_factory=list,
        max_length=MAX_DEPENDENCIES,
        description="Ids of jobs that must end first (each an existing job)",
    )
    after: Literal["ok", "any"] = Field(
        default="ok", description="ok: every dependency SUCCEEDED; any: every dependency ended, however"
    )
    array: str | ArrayValues | None = Field(
        default=None, description='N jobs at once: a range ("0-9", "1,3,8", "0-99:10") or {values: [...]}'
    )

    @field_validator("array", mode="before")
    @classmethod
    def _array(cls, value: Any) -> Any:
        # One message naming what is wrong, not one per member of the union.
        if value is None or isinstance(value, ArrayValues):
            return value
        if isinstance(value, str):
            parse_range(value)  # a ValueError names what is wrong with the range
            return value
        if isinstance(value, dict):
            try:
                return ArrayValues.model_validate(value)
            except ValidationError as exc:
                raise ValueError(format_validation_error(exc)) from None
        raise ValueError('must be a range like "0-9" or a mapping {values: [...]}')

    @field_validator("depends_on")
    @classmethod
    def _distinct(cls, value: list[int]) -> list[int]:
        return sorted(set(value))

    @model_validator(mode="after")
    def _parses(self) -> JobSpec:
        try:
            argv = shlex.split(self.entrypoint)
        except ValueError as exc:
            raise ValueError(f"entrypoint is not a valid command line: {exc}") from None
        if not argv:
            raise ValueError("entrypoint is empty")
        return self

    def argv(self) -> list[str]:
        """The entrypoint split into arguments."""
        return shlex.split(self.entrypoint)


def field_path(loc: Sequence[int | str]) -> str:
    """A pydantic error location as `resources.gpus`; a key that is not a plain name is quoted (`env.'a b'`)."""
    return ".".join(
        str(p) if isinstance(p, int) or (p.isprintable() and p.strip() == p != "") else repr(p) for p in loc
    )


def format_validation_error(exc: ValidationError) -> str:
    """One line naming the first bad field and what is wrong with it."""
    err = exc.errors()[0]
    where = field_path(err["loc"]) or "spec"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown field"
    return f"{where}: {msg}" + (f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else "")


def parse_spec(data: Any, *, source: str = "spec") -> JobSpec:
    """Validate a mapping as a JobSpec; a UserError names the file and field otherwise."""
    if not isinstance(data, dict):
        raise UserError(f"{source}: a job spec must be a mapping of fields, got {type(data).__name__}")
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        raise UserError(f"{source}: {format_validation_error(exc)}") from None


def read_job_file(path: Path) -> str:
    """The text of a job file (UTF-8, a leading BOM dropped); a UserError naming the file otherwise."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"job file not found: {path}") from None
    except IsADirectoryError:
        raise UserError(f"job file {path} is a folder, not a file") from None
    except OSError as exc:
        raise UserError(f"cannot read job file {path}: {exc.strerror or exc}") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise UserError(
            f"{path} line {line}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); save it as UTF-8"
        ) from None


def load_spec(path: str | Path) -> JobSpec:
    """Read a job spec from a YAML or JSON file."""
    path = Path(path)
    text = read_job_file(path)
    kind = "JSON" if path.suffix == ".json" else "YAML"
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        reason = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{path}{where}: not valid {kind}: {reason}") from None
    except RecursionError:
        raise UserError(f"{path}: not a job spec: its {kind} is nested too deeply") from None
    return parse_spec(data, source=str(path))
