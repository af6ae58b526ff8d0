"""`corral simulate` on malformed traces: one `error:` line naming the file, exit 2, never a traceback (issue 14)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from corral.cli import main
from corral.errors import UserError
from corral.sim.traces import load_trace
from tests.sim.helpers import TRACES

needs_traces = pytest.mark.skipif(not TRACES.is_dir(), reason="shared traces not present")

GAVEL_LINE = "ResNet-18 (batch size 32)\tpython3 main.py\tdir\t--num_steps\t1\t2995\t1\t1\t-1.000000\t120\n"
KEY = "('ResNet-18 (batch size 32)', 1)"


def simulate_refused(trace: Path, capsys: pytest.CaptureFixture[str], *fragments: str) -> str:
    capsys.readouterr()
    assert main(["simulate", "--trace", str(trace), "--cluster", "1x8", "--json"]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert out == "" and len(lines) == 1 and lines[0].startswith("error: "), err
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


@needs_traces
def test_a_pollux_trace_with_duplicate_job_names_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "workloads").mkdir()
    (tmp_path / "apps").symlink_to(TRACES / "pollux" / "apps")
    path = tmp_path / "workloads" / "w.csv"
    path.write_text("name,time,application,num_replicas,batch_size\nx-0,0,cifar10,1,128\nx-0,5,cifar10,2,128\n")
    simulate_refused(path, capsys, "w.csv line 3, column 'name'", "duplicate job name 'x-0'", "first on line 2")
    path.write_text("name,time,application,num_replicas,batch_size\n,0,cifar10,1,128\n")
    simulate_refused(path, capsys, "w.csv line 2, column 'name'", "empty")


@pytest.mark.parametrize(
    ("doc", "fragment"),
    [
        (b"[1, 2]", "no 'v100' object"),
        (b'"v100"', "no 'v100' object"),
        (b'{"k80": {}}', "no 'v100' object"),
        (b'{"v100": []}', "no 'v100' object"),
        (b'{"v100": "fast"}', "no 'v100' object"),
        (b'{"v100": {"%s": 29.95}}' % KEY.encode(), f'v100 entry "{KEY}"'),
        (b'{"v100": {"%s": {"null": "fast"}}}' % KEY.encode(), f'v100 entry "{KEY}"'),
        (b'{"v100": {"%s": {"null": -3}}}' % KEY.encode(), "steps/s number >= 0"),
        (b'{"v100": {"%s": {"null": NaN}}}' % KEY.encode(), "steps/s number >= 0"),
        (b'{"v100": {"%s": {"null": true}}}' % KEY.encode(), "steps/s number >= 0"),
        (b'{"v100": {', "not valid JSON"),
        (b"[" * 100_000, "not valid JSON"),
        (b"\xff\xfe{}", "not a UTF-8 text file"),
    ],
)
def test_a_malformed_gavel_throughputs_json_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], doc: bytes, fragment: str
) -> None:
    trace = tmp_path / "one.trace"
    trace.write_text(GAVEL_LINE)
    (tmp_path / "simulation_throughputs.json").write_bytes(doc)
    simulate_refused(trace, capsys, "simulation_throughputs.json", fragment)


def test_a_gavel_throughputs_path_that_is_a_folder_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "one.trace"
    trace.write_text(GAVEL_LINE)
    (tmp_path / "simulation_throughputs.json").mkdir()
    simulate_refused(trace, capsys, "simulation_throughputs.json", "directory")


def test_a_well_formed_minimal_throughputs_json_still_loads(tmp_path: Path) -> None:
    trace = tmp_path / "one.trace"
    trace.write_text(GAVEL_LINE)
    (tmp_path / "simulation_throughputs.json").write_text(json.dumps({"v100": {KEY: {"null": 10}}}))
    jobs = load_trace(str(trace))
    assert jobs[0].duration == pytest.approx(299.5)
    (tmp_path / "simulation_throughputs.json").write_text('{"v100": {}}')
    with pytest.raises(UserError, match="no V100 throughput for 'ResNet-18"):
        load_trace(str(trace))
