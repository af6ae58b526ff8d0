"""Random job documents, and random mutations of a valid one, fed to POST /jobs and to `corral submit FILE`:
the answer is a valid job, or one line naming what is wrong (4xx / exit 2); never a 5xx or a traceback."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corral.control.api import create_app
from corral.control.service import Service, ServiceConfig
from corral.control.spec import JobSpec
from tests.control import test_cli as shared
from tests.control.conftest import LiveServer
from tests.control.test_cli import Result

cli = shared.cli  # the CLI in this process, and a live API whose loop is stopped (fixtures)
idle = shared.idle
API = "/api/v1"
VALID: dict[str, Any] = {
    "name": "fuzz",
    "entrypoint": "python -c pass",
    "resources": {"gpus": 1, "min_gpus": 1, "max_gpus": 2},
    "priority": 3,
    "max_restarts": 1,
    "env": {"OMP_NUM_THREADS": "1"},
    "timeout": 60.0,
    "duration_estimate": 30.0,
    "preemptible": True,
}
FIELDS = [
    *VALID,
    "run",
    "workdir",
    "resources.gpus",
    "resources.min_gpus",
    "resources.max_gpus",
    "env.OMP_NUM_THREADS",
    "env.X",
]
NASTY: list[Any] = [
    None, True, 0, -1, -(2**63), 2**63, 10**30, -(10**30), 1e308, -1e308, 5e-324, math.nan, math.inf, -math.inf,
    "", " ", "\x00", "a\x00b", "\ud800", "\udcff", "~nobody-here/x", "x" * 300, "python " + "s" * 300 + ".py",
    "python missing.py", "'unclosed", "A=B", "1", "-5", "1e9", [], {}, [1, "a"], {"gpus": 1}, {"": ""},
]  # fmt: skip

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
documents = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)  # fmt: skip
values = st.sampled_from(NASTY) | documents


@st.composite
def mutated_specs(draw: st.DrawFn) -> dict[str, Any]:
    """The valid spec with 1-3 fields deleted, set to something wrong, or joined by an unknown key."""
    spec = json.loads(json.dumps(VALID))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(FIELDS) | st.text(min_size=1, max_size=12)).split(".")
        parent = spec
        for key in path[:-1]:
            if not isinstance(parent.get(key), dict):
                parent[key] = {}
            parent = parent[key]
        if draw(st.booleans()) and path[-1] in parent:
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(values)
    return spec


any_document = mutated_specs() | documents


def one_line(text: str) -> bool:
    return bool(text.strip()) and "\n" not in text.strip()


# -- the API ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The API in this process over a service whose loop does not run: accepted jobs stay PENDING."""
    home: Path = tmp_path_factory.mktemp("fuzz-api")
    service = Service(ServiceConfig(home=home, devices=4))
    service.ensure_admin()
    token = (home / "admin-token").read_text().strip()
    with TestClient(create_app(service), raise_server_exceptions=False) as client:
        client.headers["Authorization"] = f"Bearer {token}"
        yield client


@given(doc=any_document)
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_post_jobs_answers_a_job_or_one_line_naming_the_field(api: TestClient, doc: Any) -> None:
    # Python's JSON: NaN and Infinity as such, lone surrogates escaped (what a sloppy client sends).
    body = json.dumps(doc).encode()
    r = api.post(f"{API}/jobs", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code < 500, (doc, r.status_code, r.text)
    if r.status_code == 201:
        job = r.json()
        JobSpec.model_validate(job["spec"])  # what was stored is a valid spec
        assert api.get(f"{API}/jobs/{job['id']}").json()["name"] == job["name"] == doc["name"]
        return
    assert 400 <= r.status_code < 500, (doc, r.status_code, r.text)
    detail = r.json()["detail"]
    assert isinstance(detail, str) and one_line(detail), (doc, detail)
    where = detail.split(":", 1)[0]
    assert ":" in detail and where, (doc, detail)  # `field: what is wrong` (`body: ...` for the whole document)


# -- the CLI ----------------------------------------------------------------------------


def _file_text(doc: Any, suffix: str) -> str:
    if suffix == ".json":
        return json.dumps(doc)
    try:
        return yaml.safe_dump(doc, allow_unicode=True)
    except yaml.YAMLError:
        return json.dumps(doc)  # JSON is (nearly) YAML


raw_yaml = st.text(alphabet=st.sampled_from(list("ab:-[]{}\"',#&*!|>%@` \n\t0.\\") + ["\x00", "\u00e9"]), max_size=60)


@given(doc=any_document | raw_yaml.map(lambda t: ("raw", t)), suffix=st.sampled_from([".yaml", ".json", ".yml"]))
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_submit_answers_a_job_or_one_error_line(
    idle: LiveServer,
    cli: Callable[..., Result],
    tmp_path: Path,
    doc: Any,
    suffix: str,
) -> None:
    path = tmp_path / f"job{suffix}"
    if isinstance(doc, tuple) and doc[:1] == ("raw",):
        path.write_text(doc[1], encoding="utf-8", errors="surrogatepass")
    else:
        path.write_text(_file_text(doc, suffix), encoding="utf-8", errors="surrogatepass")
    before = len(idle.service.store.list_jobs(limit=100_000))
    r = cli("submit", str(path), env=idle.env())
    assert "Traceback" not in r.out + r.err, r.err
    after = len(idle.service.store.list_jobs(limit=100_000))
    if r.code == 0:
        assert r.out.startswith("submitted job ") and after == before + 1, (r.out, r.err)
        return
    lines = r.err.strip().splitlines()
    assert r.code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (doc, r.code, r.err)
    assert after == before  # a refused file changes nothing
