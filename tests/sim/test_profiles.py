"""Pollux application profiles: the ground truth of application jobs' progress."""

from __future__ import annotations

import csv

import pytest

from corral.sched.types import Allocation, ClusterView
from corral.sim.profiles import load_profile
from corral.sim.traces import TraceJob
from corral.sim.work import Packing, ProfileWork
from tests.sim.helpers import TRACES

APPS = TRACES / "pollux" / "apps"
pytestmark = pytest.mark.skipif(not APPS.is_dir(), reason="shared Pollux traces not present")


def rows(path):  # noqa: ANN001, ANN201
    with open(path) as f:
        return list(csv.DictReader(f))


def test_epochs_and_target_come_from_the_validation_files() -> None:
    app = load_profile(APPS / "cifar10")
    assert (app.init_batch_size, app.max_batch_size, app.max_epochs) == (128, 4096, 100)
    last = min(float(rows(p)[99]["progress"]) for p in (APPS / "cifar10").glob("validation-*.csv"))
    assert app.target_progress == pytest.approx(last)
    assert app.epoch_of(0.0) == 0
    assert app.epoch_of(app.boundaries[1]) == 1
    assert app.epoch_of(1e12) == app.max_epochs - 1
    assert list(app.boundaries) == sorted(app.boundaries)


def test_measured_placements_are_read_back_exactly() -> None:
    app = load_profile(APPS / "cifar10")
    row = rows(APPS / "cifar10" / "placements.csv")[0]
    step, sync = app.step_time((int(row["placement"]),), float(row["local_bsz"]))
    assert (step, sync) == pytest.approx((float(row["step_time"]), float(row["sync_time"])))
    # Same placement in another order is the same measurement (the artifact's rotation rule).
    assert app.step_time((1, 3), 64) == app.step_time((3, 1), 64)


def test_unmeasured_placements_are_interpolated() -> None:
    app = load_profile(APPS / "imagenet")
    step, sync = app.step_time((4, 4, 4, 4, 4, 4, 4, 4, 4), 100)
    assert step > 0 and 0 <= sync <= step


def test_fixed_batch_follows_the_artifact_rule() -> None:
    app = load_profile(APPS / "cifar10")
    cfg = app.batch_config(2048, 6)
    assert cfg.replicas == 6 and cfg.atomic_bsz <= app.max_local_bsz
    assert 2048 <= cfg.batch_size <= 2048 + 6 * (cfg.accum_steps + 1)


def test_one_gpu_at_the_initial_batch_progresses_one_iteration_per_step() -> None:
    app = load_profile(APPS / "cifar10")
    cfg = app.batch_config(128, 1)
    assert app.goodput((1,), cfg, 0) == pytest.approx(1 / app.step_time((1,), 128)[0])


def test_ideal_duration_and_adaptive_batch() -> None:
    app = load_profile(APPS / "cifar10")
    tj = TraceJob(
        id="c", submit_time=0, gpus=1, min_gpus=1, max_gpus=16, application="cifar10", batch_size=128, profile=app
    )
    work = ProfileWork(tj, Packing(ClusterView.uniform(16, 4)))
    # 100 epochs of ~391 iterations at batch 128 on one GPU.
    assert work.ideal_duration == pytest.approx(app.target_progress * app.step_time((1,), 128)[0], rel=1e-6)
    # On 8 GPUs the job picks a larger batch and gets more progress per second.
    fixed = app.goodput((4, 4), app.batch_config(128, 8), 0)
    rate, until = work.rate(Allocation.of({"n0": range(4), "n1": range(4)}), 0.0)
    assert rate >= fixed and until == app.boundaries[1]
    model = work.throughput_model(Allocation.of({"n0": range(4), "n1": range(4)}), 0.0)
    assert model is not None and model.throughput(2, 8, 1024) > 0
    assert work.max_gpus_now() == 16
