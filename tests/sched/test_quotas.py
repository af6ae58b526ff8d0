"""Device quotas around every policy: no user or group ever holds more than its quota (hypothesis), by hand too."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sched_helpers import alloc, job
from test_sched_invariants import rounds

from corral.sched import policies
from corral.sched.plan import validate
from corral.sched.quotas import REASON_QUOTA, Quotas, WithQuotas, held
from corral.sched.types import ClusterView, Node

USERS = ["ann", "bob", "cat"]
# Fewer examples than the plain invariants: each round may call the policy up to MAX_PASSES times.
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def quota_rounds(draw: st.DrawFn):
    """A random round whose jobs belong to three users (two in one group), with random quotas."""
    now, jobs, cluster = draw(rounds())
    jobs = [dataclasses.replace(j, user=draw(st.sampled_from(USERS))) for j in jobs]
    users = draw(st.dictionaries(st.sampled_from(USERS), st.integers(0, 12), max_size=3))
    groups = draw(st.dictionaries(st.just("lab"), st.integers(0, 16), max_size=1))
    return now, jobs, cluster, Quotas(users=users, groups=groups, group_of={"ann": "lab", "bob": "lab"})


@pytest.mark.parametrize("name", policies.available())
@SETTINGS
@given(case=quota_rounds())
def test_no_user_or_group_holds_more_than_its_quota(name, case):
    now, jobs, cluster, quotas = case
    decision = WithQuotas(policies.get(name), quotas).schedule(now, jobs, cluster)
    validate(decision, jobs, cluster)
    # Non-preemptible running jobs keep their devices whatever the quota: they count, they are never cut.
    pinned = dataclasses.replace(
        decision, allocations={j.id: j.allocation for j in jobs if j.is_running and not j.preemptible}
    )
    floor = held(pinned, jobs, quotas)
    limits = {f"user:{u}": n for u, n in quotas.users.items()} | {f"group:{g}": n for g, n in quotas.groups.items()}
    for key, devices in held(decision, jobs, quotas).items():
        assert devices <= max(limits[key], floor.get(key, 0)), (key, devices, limits[key])
    for j in jobs:
        if j.id in decision.reasons:
            assert j.id not in decision.allocations


CLUSTER = ClusterView((Node("n0", 8),))


def test_a_user_at_quota_waits_with_quota_devices_and_the_devices_go_to_others() -> None:
    jobs = [
        job("a1", 2, user="ann", submit_time=0, allocation=alloc(n0=[0, 1])),
        job("a2", 2, user="ann", submit_time=1),
        job("b1", 4, user="bob", submit_time=2),
    ]
    quotas = Quotas(users={"ann": 3})
    decision = WithQuotas(policies.get("fifo"), quotas).schedule(10, jobs, CLUSTER)
    assert decision.allocations["a1"] == alloc(n0=[0, 1])
    assert "a2" not in decision.allocations and decision.reasons["a2"] == REASON_QUOTA
    assert decision.allocations["b1"].num_devices == 4  # fifo would have blocked it behind a2 otherwise


def test_a_group_quota_counts_every_member() -> None:
    jobs = [job("a", 3, user="ann", submit_time=0), job("b", 3, user="bob", submit_time=1)]
    quotas = Quotas(groups={"lab": 4}, group_of={"ann": "lab", "bob": "lab"})
    decision = WithQuotas(policies.get("priority"), quotas).schedule(0, jobs, CLUSTER)
    assert set(decision.allocations) == {"a"} and decision.reasons["b"] == REASON_QUOTA


def test_an_elastic_job_is_offered_what_its_quota_leaves() -> None:
    jobs = [job("e", 2, lo=1, hi=8, user="ann")]
    decision = WithQuotas(policies.get("pollux"), Quotas(users={"ann": 3})).schedule(0, jobs, CLUSTER)
    assert 1 <= decision.allocations["e"].num_devices <= 3


def test_a_lowered_quota_preempts_the_newest_running_job() -> None:
    jobs = [
        job("old", 2, user="ann", submit_time=0, allocation=alloc(n0=[0, 1])),
        job("new", 2, user="ann", submit_time=5, allocation=alloc(n0=[2, 3])),
    ]
    decision = WithQuotas(policies.get("priority"), Quotas(users={"ann": 2})).schedule(9, jobs, CLUSTER)
    assert set(decision.allocations) == {"old"} and decision.reasons["new"] == REASON_QUOTA


def test_no_quotas_is_the_inner_policy() -> None:
    jobs = [job("a", 3, user="ann"), job("b", 6, user="bob", submit_time=1)]
    inner = policies.get("priority")
    assert WithQuotas(inner, Quotas()).schedule(0, jobs, CLUSTER) == inner.schedule(0, jobs, CLUSTER)
