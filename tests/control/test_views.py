"""Live JobViews: throughput models fitted from step-time reports, duration estimates, pinned and waiting views."""

from __future__ import annotations

import math

import pytest

from corral.control.store import EFFICIENCY_KEY, OBSERVATIONS_KEPT, Store, observe_step_times
from corral.control.views import (
    EVERY_SAMPLE_COUNTS,
    duration_estimate,
    job_view,
    model_description,
    throughput_model,
)
from corral.goodput import ThroughputParams, fit_throughput


def _report(n: int, r: int, b: int, t: float) -> dict[str, float]:
    return {"step_time": t, "nodes": n, "replicas": r, "local_batch": b, "samples_per_s": r * b / t}


def test_step_times_are_averaged_per_configuration_and_then_frozen() -> None:
    obs = observe_step_times({}, [_report(1, 2, 32, 0.1), _report(1, 2, 32, 0.3), _report(1, 4, 32, 0.2)])
    assert obs == {"1,2,32": [pytest.approx(0.2), 2], "1,4,32": [0.2, 1]}
    for _ in range(20):
        obs = observe_step_times(obs, [_report(1, 2, 32, 5.0)]) or obs
    assert obs["1,2,32"][1] == OBSERVATIONS_KEPT  # later reports leave the fit alone
    assert observe_step_times(obs, [{"loss": 1.0}, {"step_time": math.nan, "replicas": 1, "local_batch": 2}]) is None


def test_a_job_gets_the_default_model_until_it_reports_then_its_own_fit(tmp_path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    job = store.add_job(
        {"name": "j", "entrypoint": "python x.py", "resources": {"gpus": 2, "min_gpus": 1, "max_gpus": 4}}, "ann"
    )
    assert job_view(store.get_job(job.id)).throughput is None
    truth = ThroughputParams(alpha_c=0.01, beta_c=0.002, alpha_n=0.02, beta_n=0.001)
    rows = [(1, r, 32, truth.step_time(1, r, 32)) for r in (1, 2, 4)]
    store.add_metrics_batch(job.id, [(i, _report(*row), None) for i, row in enumerate(rows)])
    model = job_view(store.get_job(job.id)).throughput
    assert model is not None
    assert model.params == fit_throughput([tuple(map(float, row)) for row in rows])
    assert model.init_batch == 32 and model.max_local_batch == 32 and model.noise_scale == EVERY_SAMPLE_COUNTS * 32
    # Every sample counts: the goodput of r replicas is their throughput at the local batch the job runs.
    assert model.goodput(1, 4) == pytest.approx(4 * 32 / model.params.step_time(1, 4, 32), rel=1e-6)


def test_an_adaptive_job_gets_throughput_and_efficiency_from_its_reports(tmp_path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    job = store.add_job(
        {"name": "a", "entrypoint": "python x.py", "resources": {"gpus": 1, "min_gpus": 1, "max_gpus": 4}}, "ann"
    )
    truth = ThroughputParams(alpha_c=0.01, beta_c=0.0002, alpha_n=0.02, beta_n=0.001)
    rows = [(1, r, b, truth.step_time(1, r, b)) for r, b in ((1, 32), (1, 64), (2, 48), (4, 40))]
    stats = {"noise_scale": 123.456, "init_batch": 32, "max_batch": 1024}
    # the second report's step covers 2 accumulated micro-steps: the model's unit is one
    reports = [{**_report(*row), **stats} for row in rows]
    reports[1] = {**reports[1], "step_time": 2 * rows[1][3], "accum_steps": 2}
    store.add_metrics_batch(job.id, [(i, rep, None) for i, rep in enumerate(reports)])
    observed = store.get_job(job.id).observations
    assert observed[EFFICIENCY_KEY] == {"noise_scale": 123.0, "init_batch": 32.0, "max_batch": 1024.0}
    assert observed["1,1,64"][0] == pytest.approx(rows[1][3])
    model = job_view(store.get_job(job.id)).throughput
    fitted = fit_throughput([tuple(map(float, row)) for row in rows])
    assert model is not None and model.params.as_array() == pytest.approx(fitted.as_array(), rel=1e-6)
    assert (model.init_batch, model.max_batch, model.noise_scale, model.max_local_batch) == (32, 1024, 123, None)
    # Its goodput is Pollux's: throughput at the best batch times (phi + M0) / (phi + M).
    best = float(model.optimal_batch(1, 4))
    assert 32 < best <= 1024
    assert model.goodput(1, 4) == pytest.approx(model.throughput(1, 4, best) * (123 + 32) / (123 + best))
    assert "efficiency from noise scale 123, adaptive batch 32..1024" in model_description(observed, 4)


def test_a_fixed_batch_job_reporting_a_noise_scale_keeps_every_sample_counting() -> None:
    obs = observe_step_times({}, [{**_report(1, 1, 32, 0.1), "noise_scale": 50.0}])
    assert obs is not None and obs[EFFICIENCY_KEY] == {"noise_scale": 50.0}
    model = throughput_model(obs, 4)
    assert model is not None and model.noise_scale == EVERY_SAMPLE_COUNTS * 32
    assert "fixed batch" in model_description(obs, 4)
    assert model_description({}, 4) == "default model: no step times reported yet"
    assert model_description({"2,1,32": [0.1, 1]}, 4) == "default model: no step times reported yet"  # unusable


def test_bad_efficiency_reports_are_ignored() -> None:
    for bad in ({"noise_scale": -1.0}, {"noise_scale": math.inf}, {"noise_scale": "x"}):
        assert observe_step_times({}, [bad]) is None
    # bounds that make no model: the throughput-only model stands in
    obs = {"1,1,32": [0.1, 1], EFFICIENCY_KEY: {"noise_scale": 5.0, "init_batch": 64.0, "max_batch": 32.0}}
    model = throughput_model(obs, 4)
    assert model is not None and model.noise_scale == EVERY_SAMPLE_COUNTS * 32


def test_unfittable_reports_leave_the_default_model() -> None:
    assert throughput_model({"2,1,32": [0.1, 1]}, 4) is None  # more nodes than replicas
    assert throughput_model({"garbage": [0.1, 1]}, 4) is None


def test_duration_estimate_is_the_users_else_inferred_from_progress() -> None:
    assert duration_estimate({"duration_estimate": 300}, 50, 0.5, 2) == 300
    assert duration_estimate({}, 200, 0.5, 2) == 200  # 100 s at 2 devices for half the work
    assert duration_estimate({}, 200, 0.01, 2) is None  # too early to say
    assert duration_estimate({}, 0, None, 2) is None


def test_pinned_and_waiting_views(tmp_path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    job = store.add_job(
        {"name": "j", "entrypoint": "python x.py", "resources": {"gpus": 2, "min_gpus": 1, "max_gpus": 4}}, "ann"
    )
    with store.session() as s:
        from corral.control.store import Job

        row = s.get(Job, job.id)
        row.state, row.allocation, row.attempt = "RUNNING", {"n0": [0, 1, 2]}, 3
    stored = store.get_job(job.id)
    assert job_view(stored).allocation.num_devices == 3 and job_view(stored).restarts == 2
    assert not job_view(stored, waiting=True).allocation
    pinned = job_view(stored, pinned=True)
    assert (pinned.min_gpus, pinned.max_gpus, pinned.preemptible) == (3, 3, False)
