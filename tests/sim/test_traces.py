"""Trace loaders: every format and spec, and errors that name the file, line and column."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from corral.errors import UserError
from corral.sim.traces import TraceJob, load_trace
from tests.sim.helpers import TRACES

needs_traces = pytest.mark.skipif(not TRACES.is_dir(), reason="shared traces not present")


def write(tmp_path: Path, text: str, name: str = "trace.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_generic_csv_with_optional_columns(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "id,submit_time,duration,gpus,min_gpus,max_gpus,priority,user\nb,30,60,2,,,1,bob\na,0,3600.5,4,2,8,0,alice\n\n",
    )
    jobs = load_trace(str(path))
    assert [j.id for j in jobs] == ["a", "b"]  # sorted by submit time
    assert jobs[0] == TraceJob(
        id="a", submit_time=0.0, duration=3600.5, gpus=4, min_gpus=2, max_gpus=8, priority=0, user="alice"
    )
    assert (jobs[1].min_gpus, jobs[1].max_gpus, jobs[1].priority, jobs[1].user) == (2, 2, 1, "bob")


def test_generic_csv_needs_only_the_four_required_columns(tmp_path: Path) -> None:
    jobs = load_trace(str(write(tmp_path, "gpus,duration,submit_time,id\n1,10,0,x\n")))
    assert jobs == [TraceJob(id="x", submit_time=0.0, duration=10.0, gpus=1)]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("a,0,10,x", "trace.csv line 3, column 'gpus': expected a positive integer, got 'x'"),
        ("a,0,10,0", "trace.csv line 3, column 'gpus': expected a positive integer, got '0'"),
        ("a,0,10,1.5", "column 'gpus': expected a positive integer, got '1.5'"),
        ("a,-1,10,1", "trace.csv line 3, column 'submit_time': expected a non-negative number, got '-1'"),
        ("a,0,0,1", "trace.csv line 3, column 'duration': expected a positive number, got '0'"),
        ("a,0,nan,1", "column 'duration': expected a positive number, got 'nan'"),
        ("a,0,10", "trace.csv line 3: expected 4 fields (id,submit_time,duration,gpus), got 3"),
        ("ok,0,10,1", "trace.csv line 3, column 'id': duplicate job id 'ok' (first on line 2)"),
        (",0,10,1", "trace.csv line 3, column 'id': expected a job id"),
    ],
)
def test_malformed_rows_name_file_line_and_column(tmp_path: Path, body: str, message: str) -> None:
    path = write(tmp_path, f"id,submit_time,duration,gpus\nok,0,10,1\n{body}\n")
    with pytest.raises(UserError) as exc:
        load_trace(str(path))
    assert message in str(exc.value)
    assert str(path) in str(exc.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("id,submit_time,gpus\na,0,1\n", "line 1: missing column 'duration'"),
        ("id,submit_time,duration,gpus,gpu\na,0,1,1,1\n", "line 1: unknown column 'gpu'"),
        ("id,submit_time,duration,gpus\n", "the trace has no jobs"),
        ("", "line 1: expected a header row"),
        ("id,submit_time,duration,gpus,min_gpus\na,0,1,2,3\n", "column 'min_gpus': must be at most gpus (2), got 3"),
        ("id,submit_time,duration,gpus,max_gpus\na,0,1,2,1\n", "column 'max_gpus': must be at least gpus (2), got 1"),
    ],
)
def test_malformed_files(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_trace(str(write(tmp_path, text)))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nope.csv", "trace file not found: nope.csv"),
        ("  ", "no trace given"),
        ("foo:3", "unknown trace 'foo:3'"),
        ("synthetic:", "expected synthetic:N[:seed]"),
        ("synthetic:0", "expected synthetic:N[:seed]"),
        ("synthetic:abc", "expected synthetic:N[:seed]"),
        ("philly:5:x", "expected philly:N[:seed]"),
        ("pollux:workload-99", "not found"),
    ],
)
def test_bad_specs(spec: str, message: str) -> None:
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_trace(spec, traces_dir=TRACES)


def test_binary_file_is_a_user_error(tmp_path: Path) -> None:
    path = tmp_path / "trace.csv"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(UserError, match="not a UTF-8 text file"):
        load_trace(str(path))


def test_synthetic_is_deterministic_and_philly_shaped() -> None:
    a = load_trace("synthetic:2000:5", devices=64)
    assert a == load_trace("synthetic:2000:5", devices=64)
    assert a != load_trace("synthetic:2000:6", devices=64)
    assert len(a) == 2000 and len({j.id for j in a}) == 2000
    gpus = Counter(j.gpus for j in a)
    assert set(gpus) <= {1, 2, 4, 8, 16}
    assert gpus[1] / len(a) > 0.7  # mostly one GPU
    durations = sorted(j.duration for j in a)
    assert durations[len(a) // 2] * 3 < sum(durations) / len(a)  # heavy tail: mean >> median
    assert all(b.submit_time >= x.submit_time for x, b in zip(a, a[1:]))
    # Offered load about 70% of the devices over the arrival span.
    work = sum(j.gpus * j.duration for j in a)
    span = a[-1].submit_time - a[0].submit_time
    assert 0.5 < work / (64 * span) < 0.95


def test_synthetic_never_asks_for_more_than_the_cluster() -> None:
    assert max(j.gpus for j in load_trace("synthetic:500:1", devices=4)) <= 4


@needs_traces
def test_philly_sample() -> None:
    a = load_trace("philly:300:2", traces_dir=TRACES)
    assert a == load_trace("philly:300:2", traces_dir=TRACES)
    assert len(a) == 300
    assert all(j.duration >= 60 and 0 <= j.submit_time < 86400 for j in a)
    assert Counter(j.gpus for j in a)[1] > 200
    with pytest.raises(UserError, match="only"):
        load_trace("philly:10000000", traces_dir=TRACES)


@needs_traces
def test_philly_file_loads_every_row(tmp_path: Path) -> None:
    lines = (TRACES / "pollux" / "philly.csv").read_text().splitlines()[:6]
    jobs = load_trace(str(write(tmp_path, "\n".join(lines) + "\n", "philly.csv")))
    assert len(jobs) == 5 and jobs[0].submit_time == 0.0
    bad = lines[:2] + ["2017-10-09 07:01:55,66.0,many,66.0,11cb48"]
    with pytest.raises(UserError, match="philly.csv line 3, column 'num_gpus'"):
        load_trace(str(write(tmp_path, "\n".join(bad) + "\n", "philly.csv")))


@needs_traces
def test_pollux_workload() -> None:
    jobs = load_trace("pollux:workload-1", traces_dir=TRACES)
    assert len(jobs) == 160
    first = jobs[0]
    assert (first.id, first.submit_time, first.application, first.gpus, first.batch_size) == (
        "cifar10-0",
        107.0,
        "cifar10",
        6,
        2048,
    )
    assert first.duration is None and first.profile is not None
    assert first.min_gpus == 1 and first.max_gpus >= first.gpus
    assert all(j.max_gpus == j.gpus for j in jobs if j.application == "ncf")
    realistic = load_trace("pollux:workloads-realistic/workload-6", traces_dir=TRACES)
    assert len(realistic) == 160 and Counter(j.gpus for j in realistic)[1] > 100


@needs_traces
def test_pollux_workload_with_unknown_application(tmp_path: Path) -> None:
    wl = tmp_path / "workloads"
    wl.mkdir()
    (tmp_path / "apps").symlink_to(TRACES / "pollux" / "apps")
    path = wl / "w.csv"
    path.write_text("name,time,application,num_replicas,batch_size\nx-0,0,gpt5,1,32\n")
    with pytest.raises(UserError, match=r"w.csv line 2, column 'application': no profile for 'gpt5'.*known: bert"):
        load_trace(str(path))


@needs_traces
@pytest.mark.parametrize(("name", "count"), [("small_test", 20), ("max_min_fairness", 96), ("msr_seed0_23dbec", 9)])
def test_gavel_traces(name: str, count: int) -> None:
    jobs = load_trace(f"gavel:{name}", traces_dir=TRACES)
    assert len(jobs) == count
    assert all(j.duration and j.duration > 0 and j.gpus in (1, 2, 4, 8) for j in jobs)


@needs_traces
def test_gavel_duration_is_steps_over_isolated_throughput(tmp_path: Path) -> None:
    (tmp_path / "simulation_throughputs.json").write_text(
        (TRACES / "gavel" / "simulation_throughputs.json").read_text()
    )
    line = "ResNet-18 (batch size 32)\tpython3 main.py\tdir\t--num_steps\t1\t2995\t1\t1\t-1.000000\t120"
    jobs = load_trace(str(write(tmp_path, line + "\n", "one.trace")))
    assert jobs[0].gpus == 1 and jobs[0].submit_time == 120
    assert jobs[0].duration == pytest.approx(2995 / 29.95, rel=1e-3)  # ~30 steps/s on a V100
    with pytest.raises(UserError, match=r"one.trace line 1, column 'total_steps'"):
        load_trace(str(write(tmp_path, line.replace("2995", "many") + "\n", "one.trace")))
