"""Job specs: good ones parse, bad ones give one line naming the field."""

from __future__ import annotations

import pytest

from corral.control.spec import load_spec, parse_spec
from corral.errors import UserError

GOOD = """
name: digits
entrypoint: python examples/digits.py --epochs 5
resources: {gpus: 2, min_gpus: 1, max_gpus: 4}
priority: 10
max_restarts: 2
env: {OMP_NUM_THREADS: "1"}
"""


def test_design_example_parses(tmp_path) -> None:
    f = tmp_path / "job.yaml"
    f.write_text(GOOD)
    spec = load_spec(f)
    assert spec.name == "digits" and spec.priority == 10 and spec.max_restarts == 2
    assert (spec.resources.gpus, spec.resources.min_gpus, spec.resources.max_gpus) == (2, 1, 4)
    assert spec.argv() == ["python", "examples/digits.py", "--epochs", "5"]


def test_run_is_an_alias_and_defaults_are_rigid_one_device() -> None:
    spec = parse_spec({"name": "a", "run": "python x.py"})
    assert spec.entrypoint == "python x.py"
    assert (spec.resources.gpus, spec.resources.min_gpus, spec.resources.max_gpus) == (1, 1, 1)
    assert parse_spec({"name": "a", "run": "x", "resources": {"max_gpus": 4}}).resources.min_gpus == 1


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"name": "a"}, "entrypoint: Field required"),
        ({"name": "a", "run": "x", "colour": "red"}, "colour: unknown field"),
        (
            {"name": "a", "run": "x", "resources": {"gpus": -1}},
            "resources.gpus: Input should be greater than or equal to 1",
        ),
        (
            {"name": "a", "run": "x", "resources": {"gpus": 10**6}},
            "resources.gpus: Input should be less than or equal to 4096",
        ),
        (
            {"name": "a", "run": "x", "resources": {"min_gpus": 4, "max_gpus": 2}},
            "min_gpus (4) must be <= max_gpus (2)",
        ),
        ({"name": "a", "run": "x", "resources": {"gpus": 8, "max_gpus": 2}}, "gpus (8) must lie within"),
        ({"name": "a", "run": "x", "priority": "high"}, "priority: Input should be a valid integer"),
        ({"name": "a b", "run": "x"}, "name: String should match pattern"),
        ({"name": "a", "run": "python 'unclosed"}, "entrypoint is not a valid command line"),
        ({"name": "a", "run": "x", "max_restarts": -1}, "max_restarts: Input should be greater than or equal to 0"),
    ],
)
def test_bad_specs_name_the_field(data, message) -> None:
    with pytest.raises(UserError) as info:
        parse_spec(data, source="job.yaml")
    text = str(info.value)
    assert text.startswith("job.yaml: ") and message in text and "\n" not in text


def test_bad_files(tmp_path) -> None:
    with pytest.raises(UserError, match="job file not found"):
        load_spec(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\nrun: x\n")
    with pytest.raises(UserError, match=r"bad.yaml line \d+, column \d+: not valid YAML"):
        load_spec(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string\n")
    with pytest.raises(UserError, match="must be a mapping"):
        load_spec(scalar)


@pytest.mark.parametrize("field", ["timeout", "duration_estimate"])
@pytest.mark.parametrize(
    ("suffix", "literal"),
    [
        (".yaml", ".nan"),
        (".yaml", ".inf"),
        (".yaml", "-.inf"),
        (".yaml", "inf"),
        (".json", "NaN"),
        (".json", "Infinity"),
    ],
)
def test_nan_and_infinity_are_refused_naming_the_field(tmp_path, field: str, suffix: str, literal: str) -> None:
    # YAML reads .nan/.inf as floats, Python's JSON reads NaN/Infinity: both must stop at validation.
    f = tmp_path / f"job{suffix}"
    f.write_text(f'{{"name": "a", "run": "x", "{field}": {literal}}}\n')
    with pytest.raises(UserError) as info:
        load_spec(f)
    assert str(info.value) == f"{f}: {field}: Input should be a finite number"
    assert parse_spec({"name": "a", "run": "x", field: 3600.0}).model_dump()[field] == 3600.0
