"""Metrics on a hand-made result, and the report files they feed."""

from __future__ import annotations

import json
from array import array
from pathlib import Path

import pytest

from corral.sim.engine import JobResult, JobStatus, SimConfig, SimResult
from corral.sim.metrics import compute_metrics, finish_time_fairness, queue_series, utilisation_series
from corral.sim.report import markdown_table, write_report


def result(policy: str = "hand") -> SimResult:
    def jr(jid, submit, gpus, ideal, status, start=None, finish=None, held=0.0, restarts=0, preempt=0):  # noqa: ANN001, ANN202
        return JobResult(
            jid, "u", 0, submit, gpus, gpus, gpus, ideal, status, start, finish, held, 0.0, restarts, preempt
        )

    jobs = (
        jr("a", 0.0, 2, 100.0, JobStatus.FINISHED, 0.0, 100.0, 200.0),
        jr("b", 10.0, 4, 50.0, JobStatus.FINISHED, 100.0, 150.0, 200.0, restarts=1, preempt=1),
        jr("c", 20.0, 8, 10.0, JobStatus.UNSCHEDULABLE),
        jr("d", 30.0, 1, 10.0, JobStatus.UNFINISHED),
    )
    return SimResult(
        policy=policy,
        capacity=4,
        config=SimConfig(),
        jobs=jobs,
        times=array("d", [0, 10, 30, 100, 150]),
        used=array("d", [2, 2, 2, 4, 0]),
        queued=array("d", [0, 1, 2, 1, 1]),
        active=array("d", [1, 2, 3, 2, 1]),
        end_time=200.0,
    )


def test_summary_metrics_by_hand() -> None:
    m = compute_metrics(result())
    assert (m.jobs, m.finished, m.unfinished, m.unschedulable) == (4, 2, 1, 1)
    assert m.avg_jct == pytest.approx(120)
    assert m.median_jct == pytest.approx(120)
    assert m.p99_jct == pytest.approx(139.6)
    assert m.makespan == pytest.approx(200)
    assert m.avg_queueing_delay == pytest.approx(45)
    assert m.utilisation == pytest.approx(400 / (4 * 200))
    assert (m.preemptions, m.restarts) == (1, 1)


def test_finish_time_fairness_by_hand() -> None:
    # a: 2.6 jobs on average over [0, 100] -> fair share 4/2.6 devices < 2 -> T_id = 100 * 1.3.
    # b: 2.5 jobs over [10, 150] -> T_id = 50 * 4 * 2.5 / 4 = 125; JCT 140.
    rho = finish_time_fairness(result())
    assert rho == pytest.approx([100 / 130, 140 / 125])
    m = compute_metrics(result())
    assert m.ftf_max == pytest.approx(1.12)
    assert m.ftf_unfair_share == pytest.approx(0.5)


def test_time_series_are_time_weighted_bins() -> None:
    t, util = utilisation_series(result(), points=4)
    assert list(t) == [0, 50, 100, 150]
    assert util == pytest.approx([0.5, 0.5, 1.0, 0.0])
    _, queue = queue_series(result(), points=4)
    assert queue == pytest.approx([1.2, 2.0, 1.0, 1.0])


def test_metrics_of_an_empty_run_are_undefined_not_errors() -> None:
    empty = SimResult("none", 4, SimConfig(), (), array("d"), array("d"), array("d"), array("d"))
    m = compute_metrics(empty)
    assert m.avg_jct is None and m.makespan is None and m.utilisation is None and m.ftf_max is None


def test_report_files(tmp_path: Path) -> None:
    paths = write_report(tmp_path, [result("fifo"), result("srtf")], {"trace": "hand", "cluster": "1x4"})
    assert sorted(p.name for p in paths) == sorted(
        ["report.md", "metrics.json", "jct_cdf.png", "utilisation.png", "queue.png"]
    )
    doc = json.loads((tmp_path / "metrics.json").read_text())
    assert doc["policies"]["srtf"]["avg_jct"] == pytest.approx(120)
    md = (tmp_path / "report.md").read_text()
    assert "| fifo |" in md and "| srtf |" in md
    assert all((tmp_path / n).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for n in ("jct_cdf.png", "queue.png"))


def test_markdown_table_shows_dashes_for_undefined() -> None:
    empty = SimResult("none", 4, SimConfig(), (), array("d"), array("d"), array("d"), array("d"))
    table = markdown_table([compute_metrics(empty)])
    assert table.splitlines()[2].startswith("| none | 0 | - |")
