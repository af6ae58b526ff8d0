"""The policy registry, and the shape of corral.sched: pure code with no I/O imports."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import corral.sched
from corral.errors import UserError
from corral.sched import policies
from corral.sched.placement import RandomPlacer, SpreadPlacer
from corral.sched.types import Policy

SCHED = Path(corral.sched.__file__).parent


def test_available_lists_every_policy_sorted():
    assert policies.available() == [
        "fairshare",
        "fifo",
        "fifo-backfill",
        "pollux",
        "priority",
        "srtf",
        "themis",
        "tiresias",
    ]


@pytest.mark.parametrize("name", policies.available())
def test_get_returns_a_policy_with_that_name(name):
    policy = policies.get(name)
    assert isinstance(policy, Policy)
    assert policy.name == name
    assert "placer" in policies.options(name)


def test_get_is_case_and_space_insensitive_and_builds_new_instances():
    assert policies.get(" FIFO ").name == "fifo"
    assert policies.get("srtf") is not policies.get("srtf")


def test_unknown_policy_names_the_known_ones():
    with pytest.raises(UserError) as err:
        policies.get("lottery")
    assert "'lottery'" in str(err.value)
    assert ", ".join(policies.available()) in str(err.value)


def test_unknown_option_names_the_options():
    with pytest.raises(UserError, match=r"no option 'treshold'.*thresholds"):
        policies.get("tiresias", treshold=[1])


@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        ("tiresias", {"thresholds": [100, 10]}, "increasing"),
        ("tiresias", {"starvation_factor": 0}, "starvation_factor"),
        ("pollux", {"restart_penalty": 1.5}, "restart_penalty"),
        ("pollux", {"p": float("nan")}, "finite"),
        ("fifo", {"placer": "nowhere"}, "unknown placer"),
    ],
)
def test_bad_option_values_are_user_errors(name, options, match):
    with pytest.raises(UserError, match=match):
        policies.get(name, **options)


def test_placer_by_name_or_instance():
    assert isinstance(policies.get("fifo", placer="spread").placer, SpreadPlacer)
    placer = RandomPlacer(seed=3)
    assert policies.get("pollux", placer=placer, p=0.5).placer is placer


# Modules that do I/O, read clocks, start threads or log: none belongs in a pure scheduler.
FORBIDDEN_IMPORTS = {
    "asyncio",
    "concurrent",
    "datetime",
    "io",
    "logging",
    "multiprocessing",
    "os",
    "pathlib",
    "shutil",
    "socket",
    "subprocess",
    "sys",
    "tempfile",
    "threading",
    "time",
}


PURE = sorted(SCHED.rglob("*.py")) + [SCHED.parent / "goodput.py"]  # the goodput model is as pure as sched


@pytest.mark.parametrize("path", PURE, ids=lambda p: str(p.relative_to(SCHED.parent)))
def test_sched_sources_import_no_io_clock_thread_or_logging(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            assert top not in FORBIDDEN_IMPORTS, f"{path.name} imports {name}"
            assert top in {"corral", "numpy", "scipy", "__future__"} or top in sys.stdlib_module_names, name
            if top == "corral":
                assert name in ("corral.errors", "corral.goodput") or name.startswith("corral.sched"), (
                    f"{path.name} imports {name}"
                )


def test_importing_sched_pulls_in_only_stdlib_numpy_and_scipy():
    code = (
        "import sys\n"
        "import corral\n"  # the package itself (its re-exports are not corral.sched's imports)
        "before = set(sys.modules)\n"
        "import corral.sched, corral.sched.policies, corral.sched.placement, corral.goodput\n"
        "allowed = {'corral', 'numpy', 'scipy'} | set(sys.stdlib_module_names)\n"
        "bad = sorted({m.split('.')[0] for m in set(sys.modules) - before} - allowed)\n"
        "assert not bad, bad\n"
        "heavy = [m for m in ('torch', 'sqlalchemy', 'fastapi', 'ray', 'typer', 'rich', 'pydantic', 'matplotlib')"
        " if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "other = sorted(m for m in set(sys.modules) - before if m.startswith('corral.')"
        " and not m.startswith('corral.sched') and m not in ('corral.errors', 'corral.goodput'))\n"
        "assert not other, other\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
