"""Every transition of the scheduler loop on the FakeExecutor, and one test per defect it once had."""

from __future__ import annotations

import pytest

from corral.control.executors.base import Ending
from corral.control.store import Store
from corral.sched.types import Allocation, Decision
from tests.control.loop_helpers import FakeLoop, make_loop


@pytest.fixture
def loop(tmp_path) -> FakeLoop:
    return make_loop(tmp_path)


def test_run_succeeds(loop: FakeLoop) -> None:
    j = loop.submit()
    loop.round()
    assert loop.job(j).state == "RUNNING" and loop.job(j).run_ref
    loop.executor.finish(j, 0)
    loop.round(5)
    job = loop.job(j)
    assert job.state == "SUCCEEDED" and job.run_time == 5 and job.attained_service == 5
    assert loop.path(j) == ["PENDING", "RUNNING", "SUCCEEDED"]
    assert loop.executor.running() == []


def test_running_event_carries_the_allocation(loop: FakeLoop) -> None:
    j = loop.submit(gpus=2)
    loop.round()
    running = [e for e in loop.store.events(j) if e.dst == "RUNNING"]
    assert running[0].data == {"allocation": {"n0": [0, 1]}, "attempt": 1}


def test_run_time_is_counted_once_across_a_service_restart(loop: FakeLoop) -> None:
    """Defect: after a restart the first round counted again from run_start (timeout early, service inflated)."""
    j = loop.submit(gpus=2)
    loop.round()
    for _ in range(10):
        loop.round(10)
    assert loop.job(j).run_time == 100
    loop.restart()
    loop.round(10)
    job = loop.job(j)
    assert job.run_time == 110 and job.attained_service == 220


def test_timeout_fires_after_the_right_running_time_across_a_restart(loop: FakeLoop) -> None:
    j = loop.submit(timeout=100)
    loop.round()
    loop.round(60)
    loop.restart()
    loop.round(30)  # 90 s of running: not yet
    assert loop.job(j).state == "RUNNING" and loop.job(j).intent == ""
    loop.round(15)  # 105 s: the stop is asked
    assert loop.job(j).intent == "timeout"
    loop.round()
    job = loop.job(j)
    assert job.state == "FAILED" and "timed out after 105 s" in loop.store.events(j)[-1].cause


def test_cancel_in_flight_when_the_service_dies_is_not_forgotten(loop: FakeLoop) -> None:
    """Defect: recover() requeued a job whose cancel was under way, and it ran again."""
    j = loop.submit()
    loop.executor.ignore_sigterm.add(j)
    loop.round()
    loop.sched.cancel(j)
    loop.restart()
    for _ in range(3):
        loop.round(5)
    job = loop.job(j)
    assert job.state == "CANCELLED" and loop.starts(j) == 1
    assert "SIGKILL" in [sig for h, sig in loop.executor.signals if h.job_id == j]


def test_cancel_whose_run_vanished_while_the_service_was_down_is_cancelled(loop: FakeLoop) -> None:
    j = loop.submit()
    loop.round()
    loop.executor.ignore_sigterm.add(j)
    loop.executor.live(j).ignore_sigterm = True
    loop.sched.cancel(j)
    del loop.executor.runs[(j, 1)]  # gone without a trace
    loop.restart()
    loop.round(1)
    assert loop.job(j).state == "CANCELLED" and loop.starts(j) == 1


def test_timeout_in_flight_when_the_service_dies_ends_failed(loop: FakeLoop) -> None:
    j = loop.submit(timeout=10)
    loop.executor.ignore_sigterm.add(j)
    loop.round()
    loop.round(11)
    assert loop.job(j).intent == "timeout"
    loop.restart()
    loop.round(20)
    job = loop.job(j)
    assert job.state == "FAILED" and "timed out" in loop.store.events(j)[-1].cause and loop.starts(j) == 1


def test_adopted_run_keeps_its_kill_deadline(loop: FakeLoop) -> None:
    """Defect: a run adopted after a restart lost its kill deadline; one that ignores SIGTERM kept its devices."""
    low = loop.submit("low", gpus=4, priority=0)
    loop.executor.ignore_sigterm.add(low)
    loop.round()
    loop.submit("high", gpus=4, priority=10)
    loop.round(1)
    assert loop.job(low).intent == "preempt"
    loop.restart()
    loop.round(5)
    assert loop.job(low).state == "RUNNING"  # within its grace
    loop.round(6)  # 11 s after the SIGTERM: killed
    loop.round()
    job = loop.job(low)
    assert job.state == "PENDING" and job.preemptions == 1 and job.restarts == 0
    assert loop.job(low + 1).state == "RUNNING"


def test_a_commit_that_fails_after_a_start_never_duplicates_the_run(loop: FakeLoop, monkeypatch) -> None:
    """Defect: starts happened inside the round's transaction; a rollback left the run started and forgotten."""
    j = loop.submit()
    real = Store.transition
    calls = {"n": 0}

    def flaky(self, s, job, dst, cause, **kw):
        if dst.value == "RUNNING" and calls["n"] == 0:
            calls["n"] += 1
            raise RuntimeError("database went away")
        return real(self, s, job, dst, cause, **kw)

    monkeypatch.setattr(Store, "transition", flaky)
    with pytest.raises(RuntimeError):
        loop.round()
    assert loop.job(j).state == "PENDING" and loop.job(j).intent == "start"
    loop.round(1)
    assert loop.job(j).state == "RUNNING" and loop.starts(j) == 1
    loop.executor.finish(j)
    loop.round(1)
    assert loop.job(j).state == "SUCCEEDED" and loop.starts(j) == 1


def test_a_commit_that_fails_while_recording_an_end_loses_nothing(loop: FakeLoop, monkeypatch) -> None:
    j = loop.submit()
    loop.round()
    loop.executor.finish(j, 0)
    real = Store.transition

    def broken(self, s, job, dst, cause, **kw):
        raise RuntimeError("database went away")

    monkeypatch.setattr(Store, "transition", broken)
    loop.round(1)
    assert loop.job(j).state == "RUNNING"  # not recorded, and not forgotten by the executor either
    monkeypatch.setattr(Store, "transition", real)
    loop.round(1)
    assert loop.job(j).state == "SUCCEEDED" and loop.path(j).count("SUCCEEDED") == 1


def test_success_while_being_cancelled_is_success(loop: FakeLoop) -> None:
    """Defect: a job that succeeded while being cancelled was recorded CANCELLED."""
    j = loop.submit()
    loop.executor.ignore_sigterm.add(j)
    loop.round()
    loop.sched.cancel(j)
    loop.executor.finish(j, 0)
    loop.round(1)
    assert loop.job(j).state == "SUCCEEDED"


def test_crash_during_preemption_uses_max_restarts(loop: FakeLoop) -> None:
    """Defect: a crash while being preempted counted as a preemption and never used max_restarts."""
    low = loop.submit("low", gpus=4, max_restarts=0)
    loop.executor.ignore_sigterm.add(low)
    loop.round()
    loop.submit("high", gpus=4, priority=10)
    loop.round(1)
    loop.executor.finish(low, 1)  # crashed while checkpointing
    loop.round(1)
    job = loop.job(low)
    assert job.state == "FAILED" and job.preemptions == 0 and job.exit_code == 1


def test_exit_75_nobody_asked_for_is_a_failure(loop: FakeLoop) -> None:
    """Defect: a job exiting 75 on its own was requeued forever."""
    j = loop.submit(max_restarts=1)
    for _ in range(2):
        loop.round(1)
        loop.executor.finish(j, 75)
        loop.round(1)
    job = loop.job(j)
    assert job.state == "FAILED" and job.restarts == 1 and job.preemptions == 0 and loop.starts(j) == 2


def test_failed_run_restarts_on_its_devices_then_fails_when_restarts_run_out(loop: FakeLoop) -> None:
    j = loop.submit(gpus=2, max_restarts=1)
    loop.round()
    first = loop.job(j).allocation
    loop.executor.finish(j, 3)
    loop.round(1)
    assert loop.job(j).state == "RUNNING" and loop.job(j).allocation == first and loop.job(j).restarts == 1
    loop.executor.finish(j, 3)
    loop.round(1)
    assert loop.job(j).state == "FAILED" and loop.job(j).exit_code == 3
    assert loop.path(j) == ["PENDING", "RUNNING", "RESTARTING", "RUNNING", "FAILED"]


def test_lost_run_resumes_without_using_a_restart(loop: FakeLoop) -> None:
    j = loop.submit(max_restarts=0)
    loop.round()
    loop.executor.lose(j)
    loop.round(1)
    job = loop.job(j)
    assert job.state == "RUNNING" and job.restarts == 0 and loop.starts(j) == 2
    assert "run lost" in [e for e in loop.store.events(j) if e.dst == "PENDING"][-1].cause


def test_devices_of_a_cancelling_job_are_not_free_to_the_policy(loop: FakeLoop) -> None:
    """Defect: devices held by CANCELLING / TIMING_OUT jobs looked free; an elastic job grew into them."""
    rigid = loop.submit("rigid", gpus=2)
    loop.executor.ignore_sigterm.add(rigid)
    loop.round()
    elastic = loop.submit("elastic", gpus=2, lo=1, hi=4)
    loop.round(1)
    assert loop.job(elastic).state == "RUNNING" and len(loop.job(elastic).allocation["n0"]) == 2
    loop.sched.cancel(rigid)
    loop.round(1)
    assert loop.job(elastic).intent == "" and loop.job(elastic).resizes == 0  # not resized into busy devices
    loop.round(10)  # the cancelled run is killed, its devices are free: now the elastic job grows
    loop.round(1)
    assert loop.job(rigid).state == "CANCELLED"
    assert loop.job(elastic).resizes == 1 and len(loop.job(elastic).allocation["n0"]) == 4


def test_invalid_decision_is_logged_and_skipped(loop: FakeLoop, caplog) -> None:
    j = loop.submit()

    class Broken:
        name = "broken"

        def schedule(self, now, jobs, cluster):
            return Decision({"ghost": Allocation.of({"n0": [0]})})

    loop.sched.policy = Broken()
    loop.round()
    assert loop.job(j).state == "PENDING" and loop.sched.skipped_rounds == 1
    assert "policy 'broken': invalid decision" in caplog.text and "ghost" in caplog.text


def test_elastic_resize_counts_a_resize_and_restarts_at_the_new_size(loop: FakeLoop) -> None:
    j = loop.submit("elastic", gpus=2, lo=1, hi=4)
    loop.round()
    assert len(loop.job(j).allocation["n0"]) == 4  # grows into idle devices
    rigid = loop.submit("rigid", gpus=2, priority=5)
    loop.round(1)  # the fake run checkpoints at once: stopped and restarted at 2 devices in this round
    job = loop.job(j)
    assert loop.job(rigid).state == "RUNNING"
    assert job.resizes == 1 and job.state == "RUNNING" and len(job.allocation["n0"]) == 2
    assert loop.executor.live(j).allocation.num_devices == 2


def test_start_failure_fails_that_job_only(loop: FakeLoop) -> None:
    bad, good = loop.submit("bad"), loop.submit("good")
    loop.executor.fail_start = lambda job_id, attempt: job_id == bad
    loop.round()
    assert loop.job(bad).state == "FAILED" and "could not start" in loop.store.events(bad)[-1].cause
    assert loop.job(good).state == "RUNNING"


def test_outcome_endings(loop: FakeLoop) -> None:
    j = loop.submit()
    loop.round()
    loop.executor.live(j).ignore_sigterm = True
    loop.sched.cancel(j)
    loop.round(11)
    outcome = [r for r in loop.executor.runs.values() if r.handle.job_id == j][0].outcome
    assert outcome.ending == Ending.KILLED


def test_a_policy_that_raises_costs_one_round(loop: FakeLoop, caplog) -> None:
    j = loop.submit()

    class Raising:
        name = "raising"

        def schedule(self, now, jobs, cluster):
            raise ZeroDivisionError("oops")

    good = loop.sched.policy
    loop.sched.policy = Raising()
    loop.round()
    assert loop.job(j).state == "PENDING" and "policy 'raising': schedule() raised" in caplog.text
    loop.sched.policy = good
    loop.round(1)
    assert loop.job(j).state == "RUNNING"
