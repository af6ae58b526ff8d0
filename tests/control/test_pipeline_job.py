"""The pipeline example as a service job: the shipped YAML runs DP 2 x PP 2 on 4 device slots and reports."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import pytest
import yaml

from tests.conftest import ROOT
from tests.control.conftest import LiveServer

pytestmark = pytest.mark.slow
API = "/api/v1"


def test_pipeline_yaml_runs_as_a_service_job(make_server: Callable[..., LiveServer]) -> None:
    server = make_server(devices=4)
    spec = yaml.safe_load((ROOT / "examples" / "demo" / "pipeline.yaml").read_text())
    c = server.client()
    resp = c.post(f"{API}/jobs", json={**spec, "workdir": str(ROOT)})
    assert resp.status_code == 201, resp.text
    job_id = resp.json()["id"]
    deadline = time.monotonic() + 240
    while (job := c.get(f"{API}/jobs/{job_id}").json())["state"] not in ("SUCCEEDED", "FAILED"):
        assert time.monotonic() < deadline, job
        time.sleep(0.5)
    log = c.get(f"{API}/jobs/{job_id}/logs").text
    assert job["state"] == "SUCCEEDED", log[-3000:]
    assert "pipeline: 2 stages (auto-balanced)" in log and "dp 2" in log
    assert float(re.search(r"test accuracy ([0-9.]+)", log).group(1)) > 0.5
