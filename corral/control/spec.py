"""The job spec a user submits (YAML or JSON), validated at the edge by pydantic; errors name the field."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import yaml
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, model_validator

from corral.errors import UserError


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


class JobSpec(BaseModel):
    """A training job: what to run, where, with which environment and resources."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    entrypoint: str = Field(
        validation_alias=AliasChoices("entrypoint", "run"),
        min_length=1,
        description="Command line, e.g. `python train.py --lr 0.1`",
    )
    workdir: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
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


def format_validation_error(exc: ValidationError) -> str:
    """One line naming the first bad field and what is wrong with it."""
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "spec"
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


def load_spec(path: str | Path) -> JobSpec:
    """Read a job spec from a YAML or JSON file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"job file not found: {path}")
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        reason = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{path}{where}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {reason}") from None
    return parse_spec(data, source=str(path))
