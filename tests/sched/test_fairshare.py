"""The fair-share factor, the usage ledger, the `fairshare` policy and `priority` with `fairshare=W`.

Hand-computed scenarios (default `pack` placer), then the invariants every
policy keeps, over random rounds with several users and the non-default
options (the shared suite in test_sched_invariants.py runs the defaults).
"""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sched_helpers import alloc, as_dicts, check_decision, job
from test_sched_invariants import SETTINGS, rounds

from corral.errors import UserError
from corral.sched import policies
from corral.sched.policies._common import holds_valid
from corral.sched.policies._usage import ShareTree, UsageLedger, fairshare_factors
from corral.sched.types import REASON_PRIORITY, REASON_RESOURCES, ClusterView, JobView

R, P = REASON_RESOURCES, REASON_PRIORITY
EQUAL = ShareTree.of("test", None, None, None)


def decide(name: str, jobs, cluster, now: float = 0.0, **options):
    decision = policies.get(name, **options).schedule(now, jobs, cluster)
    check_decision(decision, jobs, cluster)
    return decision


# --- the factor ----------------------------------------------------------------


def test_factor_is_one_without_usage_and_one_half_at_the_share():
    assert fairshare_factors({}, ["ann", "bob"], EQUAL) == {"ann": 1.0, "bob": 1.0}
    # 1:1 shares, usage 500/500: U = S = 1/2 for both: F = 2^-1.
    assert fairshare_factors({"ann": 500, "bob": 500}, [], EQUAL) == {"ann": 0.5, "bob": 0.5}


def test_factor_of_users_over_and_under_their_share():
    # Equal shares S = 1/2; usage 3000/1000: U = 3/4 and 1/4.
    # ann: 2^(-0.75/0.5) = 2^-1.5 = 0.3536; bob: 2^(-0.25/0.5) = 2^-0.5 = 0.7071.
    f = fairshare_factors({"ann": 3000, "bob": 1000}, [], EQUAL)
    assert f == pytest.approx({"ann": 2**-1.5, "bob": 2**-0.5})
    # Shares 3:1 make the same usage exactly fair: U/S = 1 for both.
    f = fairshare_factors({"ann": 3000, "bob": 1000}, [], ShareTree.of("t", {"ann": 3, "bob": 1}, None, None))
    assert f == pytest.approx({"ann": 0.5, "bob": 0.5})
    # carol, with jobs but no usage yet, joins the normalisation (S = 1/3 each) at F = 1.
    # ann: 2^(-0.75 * 3) = 0.2102; bob: 2^(-0.25 * 3) = 0.5946.
    f = fairshare_factors({"ann": 3000, "bob": 1000}, ["carol"], EQUAL)
    assert f == pytest.approx({"ann": 2**-2.25, "bob": 2**-0.75, "carol": 1.0})


def test_factor_with_groups_is_the_geometric_mean_of_group_and_user_factors():
    # a1 and a2 in group g; c in no group. Root: g (share 1) and c (share 1): S_g = S_c = 1/2.
    # In g: a1 and a2 (share 1 each): S_a1 = S_a2 = 1/2 x 1/2 = 1/4.
    # Usage a1 600, a2 200, c 200 of 1000: U_g = 0.8, U_a1 = 0.6, U_a2 = 0.2, U_c = 0.2.
    # c:  2^(-0.2/0.5) = 2^-0.4 = 0.7579
    # a1: 2^(-(0.8/0.5 + 0.6/0.25) / 2) = 2^(-(1.6 + 2.4) / 2) = 2^-2 = 0.25
    # a2: 2^(-(0.8/0.5 + 0.2/0.25) / 2) = 2^(-(1.6 + 0.8) / 2) = 2^-1.2 = 0.4353
    tree = ShareTree.of("t", None, {"a1": "g", "a2": "g"}, {"g": 1})
    f = fairshare_factors({"a1": 600, "a2": 200, "c": 200}, [], tree)
    assert f == pytest.approx({"a1": 0.25, "a2": 2**-1.2, "c": 2**-0.4})
    # Every user and every group exactly at its share: all factors are 1/2.
    # Root: g (share 3), c (share 1) -> S_g = 3/4, S_c = 1/4; a1:a2 = 2:1 -> S_a1 = 1/2, S_a2 = 1/4.
    tree = ShareTree.of("t", {"a1": 2, "a2": 1}, {"a1": "g", "a2": "g"}, {"g": 3})
    f = fairshare_factors({"a1": 500, "a2": 250, "c": 250}, [], tree)
    assert f == pytest.approx({"a1": 0.5, "a2": 0.5, "c": 0.5})


# --- the usage ledger -------------------------------------------------------------


def test_usage_decays_with_the_half_life_and_charges_jobs_that_ended():
    ledger = UsageLedger(half_life=3600.0)
    cluster = ClusterView.uniform(1, 4)
    policy = policies.get("fairshare", half_life=3600.0)
    # t=0: a (ann, 2 devices) starts; nothing received yet.
    d = policy.schedule(0.0, [job("a", 2, user="ann")], cluster)
    assert as_dicts(d) == {"a": {"n0": [0, 1]}}
    assert policy.usage.usage == {}
    # t=3600: a has received 2 x 3600 = 7200 device-seconds.
    running = job("a", 2, user="ann", attained_service=7200.0, allocation=alloc(n0=[0, 1]))
    policy.schedule(3600.0, [running], cluster)
    assert policy.usage.usage == {"ann": 7200.0}
    # The same instant again changes nothing.
    policy.schedule(3600.0, [running], cluster)
    assert policy.usage.usage == {"ann": 7200.0}
    # t=7200: a has ended (not shown); it held 2 devices since t=3600: 7200 more;
    # the earlier 7200 are one half-life old: 3600. Total 10800.
    policy.schedule(7200.0, [job("b", 1, user="bob", submit_time=7000.0)], cluster)
    assert policy.usage.usage == pytest.approx({"ann": 10800.0})
    # The ledger on its own: a job first seen with service already received is charged all of it.
    ledger.observe(100.0, [job("x", 1, user="cat", attained_service=50.0)])
    assert ledger.usage == {"cat": 50.0}


# --- the fairshare policy -----------------------------------------------------------


def fairshare_jobs():
    # 1 node x 4. ann's a1 (2 devices, 3000 device-seconds so far) holds n0:[0,1];
    # bob's b1 (1 device, 1000) holds n0:[2]; n0:[3] is free.
    # Waiting: a2 (ann, 1), b2 (bob, 1), c1 (carol, 2, nothing yet).
    # Factors (S = 1/3 each): ann 2^-2.25 = 0.21, bob 2^-0.75 = 0.59, carol 1.
    return [
        job("a1", 2, user="ann", submit_time=0, attained_service=3000, allocation=alloc(n0=[0, 1])),
        job("b1", 1, user="bob", submit_time=1, attained_service=1000, allocation=alloc(n0=[2])),
        job("a2", 1, user="ann", submit_time=2),
        job("b2", 1, user="bob", submit_time=3),
        job("c1", 2, user="carol", submit_time=4),
    ]


def test_fairshare_orders_waiting_jobs_by_factor_and_does_not_preempt():
    # Order c1 (1.0), b2 (0.59), a2 (0.21). c1 needs 2, 1 free: the head (Resources);
    # no estimates, so its reservation is unknown and later jobs start first fit:
    # b2 takes n0:[3]; a2 finds nothing free.
    d = decide("fairshare", fairshare_jobs(), ClusterView.uniform(1, 4))
    assert as_dicts(d) == {"a1": {"n0": [0, 1]}, "b1": {"n0": [2]}, "b2": {"n0": [3]}}
    assert dict(d.reasons) == {"c1": R, "a2": R}


def test_fairshare_preempts_only_users_lower_by_the_margin():
    # preempt, margin 1: c1 (F 1) may preempt jobs whose factor is < 1/2: a1 (0.21),
    # not b1 (0.59). 1 free + 2 = 3 >= 2: a1 is preempted; c1 takes 2, 1 left;
    # b2 (0.59) takes it; a1 and a2 (0.21; a1 first, submit 0) find nothing
    # free and, behind the head a1, preempt nobody.
    # Placement: c1 (2) on the two free devices of n0 that pack chooses, b2 on the last.
    cluster = ClusterView.uniform(1, 4)
    d = decide("fairshare", fairshare_jobs(), cluster, preempt=True)
    assert as_dicts(d) == {"b1": {"n0": [2]}, "c1": {"n0": [0, 1]}, "b2": {"n0": [3]}}
    assert dict(d.reasons) == {"a1": R, "a2": R}
    # margin 3: c1 may preempt only factors < 1/8: nobody. As without preempt.
    d = decide("fairshare", fairshare_jobs(), cluster, preempt=True, preempt_margin=3)
    assert as_dicts(d) == {"a1": {"n0": [0, 1]}, "b1": {"n0": [2]}, "b2": {"n0": [3]}}


def test_fairshare_reserves_for_the_head_and_backfills_only_what_ends_before():
    # now = 0, 1 node x 4. a1 (ann, 3000 attained) holds n0:[0,1], ends at 100 (estimate 200, half done).
    # b1 (bob, 1000) holds n0:[2], no estimate. Free: n0:[3].
    # Waiting in factor order: c1 (carol, 2 devices): head; at 100 a1 frees 2 -> 3 free: shadow 100, extra 1.
    # b2 (bob, 1 device, 50 s): ends at 50 <= 100: starts on n0:[3].
    # a2 (ann, 1 device, 500 s): nothing free: Resources.
    jobs = [
        job("a1", 2, user="ann", attained_service=3000, duration_estimate=200, progress=0.5,
            allocation=alloc(n0=[0, 1])),
        job("b1", 1, user="bob", submit_time=1, attained_service=1000, allocation=alloc(n0=[2])),
        job("c1", 2, user="carol", submit_time=4),
        job("b2", 1, user="bob", submit_time=3, duration_estimate=50),
        job("a2", 1, user="ann", submit_time=2, duration_estimate=500),
    ]  # fmt: skip
    cluster = ClusterView.uniform(1, 4)
    d = decide("fairshare", jobs, cluster)
    assert as_dicts(d) == {"a1": {"n0": [0, 1]}, "b1": {"n0": [2]}, "b2": {"n0": [3]}}
    assert dict(d.reasons) == {"c1": R, "a2": R}
    # 2 nodes x 4: n1 is free too (5 free): c1 fits and starts; b2 and a2 fit as well.
    d = decide("fairshare", jobs, ClusterView.uniform(2, 4))
    assert set(d.allocations) == {"a1", "b1", "c1", "b2", "a2"}


def test_fairshare_backfill_holds_back_a_long_job_of_a_user_over_its_share():
    # 1 node x 4, now = 0. a1 (ann, 3000 attained) holds n0:[0,1,2] and ends at 100
    # (estimate 200, half done). 1 device is free.
    # c1 (carol, F 1) needs 4: the head; at 100, 4 are free: shadow 100, extra 0.
    # a2 (ann, 1 device, 500 s) fits now but would end at 500 > 100 on a device
    # c1 needs: Priority. a3 (ann, 1 device, 50 s) ends at 50 <= 100: starts.
    jobs = [
        job("a1", 3, user="ann", attained_service=3000, duration_estimate=200, progress=0.5,
            allocation=alloc(n0=[0, 1, 2])),
        job("c1", 4, user="carol", submit_time=1, duration_estimate=10),
        job("a2", 1, user="ann", submit_time=2, duration_estimate=500),
        job("a3", 1, user="ann", submit_time=3, duration_estimate=50),
    ]  # fmt: skip
    d = decide("fairshare", jobs, ClusterView.uniform(1, 4))
    assert as_dicts(d) == {"a1": {"n0": [0, 1, 2]}, "a3": {"n0": [3]}}
    assert dict(d.reasons) == {"c1": R, "a2": P}
    # c1 needing 2 instead: shadow 100 with extra 2: a2 runs on a device c1 will not need.
    jobs[1] = job("c1", 2, user="carol", submit_time=1, duration_estimate=10)
    d = decide("fairshare", jobs, ClusterView.uniform(1, 4))
    assert as_dicts(d) == {"a1": {"n0": [0, 1, 2]}, "a2": {"n0": [3]}}
    assert dict(d.reasons) == {"c1": R, "a3": R}


# --- priority with fairshare=W -------------------------------------------------------


def priority_jobs(a_priority: int = 0):
    # 1 node x 3. x (ann, 3000 attained) holds n0:[0]; y (bob, 1000) holds n0:[1], both at
    # priority 1, so that neither a nor b may preempt them; n0:[2] is free.
    # Equal shares, users ann and bob: F_ann = 2^-1.5 = 0.354, F_bob = 2^-0.5 = 0.707.
    return [
        job("x", 1, user="ann", priority=1, submit_time=0, attained_service=3000, allocation=alloc(n0=[0])),
        job("y", 1, user="bob", priority=1, submit_time=1, attained_service=1000, allocation=alloc(n0=[1])),
        job("a", 1, user="ann", priority=a_priority, submit_time=2),
        job("b", 1, user="bob", submit_time=3),
    ]


@pytest.mark.parametrize(
    ("a_priority", "options", "starts"),
    [
        (0, {}, "a"),  # plain priority: equal priority, a was submitted first
        (0, {"fairshare": 1.0}, "b"),  # 0 + 0.354 < 0 + 0.707
        (1, {"fairshare": 1.0}, "a"),  # 1 + 0.354 > 0 + 0.707: priority dominates a small weight
        (1, {"fairshare": 3.0}, "b"),  # 1 + 3 x 0.354 = 2.06 < 3 x 0.707 = 2.12
        (1, {"fairshare": 3.0, "shares": {"ann": 3, "bob": 1}}, "a"),  # 3:1 shares: both at 0.5
    ],
)
def test_priority_blends_the_fairshare_factor(a_priority, options, starts):
    d = decide("priority", priority_jobs(a_priority), ClusterView.uniform(1, 3), **options)
    waits = ({"a", "b"} - {starts}).pop()
    assert as_dicts(d) == {"x": {"n0": [0]}, "y": {"n0": [1]}, starts: {"n0": [2]}}
    assert dict(d.reasons) == {waits: R}


def test_priority_with_fairshare_preempts_only_lower_priorities_the_most_served_user_first():
    # 1 node x 2, full: x (ann, prio 1, submit 0), y (bob, prio 1, submit 1).
    # h (prio 5) needs 1: the victim is the lowest priority, then the lowest factor:
    # x (ann, 0.354) with fair share; y (newest) without it.
    # b (bob, prio 0, waiting): its user is under-served, but prio 0 preempts no prio 1.
    jobs = [*priority_jobs()[:2], job("h", 1, user="cat", priority=5, submit_time=4), job("b", 1, user="bob")]
    cluster = ClusterView.uniform(1, 2)
    d = decide("priority", jobs, cluster, fairshare=1.0)
    assert as_dicts(d) == {"y": {"n0": [1]}, "h": {"n0": [0]}}
    assert dict(d.reasons) == {"x": R, "b": R}
    d = decide("priority", jobs, cluster)
    assert as_dicts(d) == {"x": {"n0": [0]}, "h": {"n0": [1]}}


# --- options ----------------------------------------------------------------------------


def test_options_are_listed_and_shown():
    assert {"shares", "groups", "group_shares", "half_life", "preempt", "preempt_margin"} <= set(
        policies.options("fairshare")
    )
    assert {"fairshare", "shares", "half_life"} <= set(policies.options("priority"))
    assert "preempt=True" in repr(policies.get("fairshare", preempt=True))
    assert "fairshare=2" in repr(policies.get("priority", fairshare=2))


@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        ("fairshare", {"shares": {"ann": 0}}, r"shares\['ann'\] must be a finite number > 0"),
        ("fairshare", {"shares": {"ann": math.inf}}, "finite"),
        ("fairshare", {"shares": ["ann"]}, "must map names to shares"),
        ("fairshare", {"groups": {"ann": 1}}, "groups must map user names to group names"),
        ("fairshare", {"group_shares": {"lab": 2}}, "group_shares names 'lab', a group no user belongs to"),
        ("fairshare", {"half_life": 0}, "half_life must be a number of seconds > 0"),
        ("fairshare", {"preempt": "yes"}, "preempt must be true or false"),
        ("fairshare", {"preempt_margin": -1}, "preempt_margin must be a number >= 0"),
        ("priority", {"fairshare": -1}, "fairshare must be a weight >= 0"),
        ("priority", {"shares": {"ann": 2}}, "priority shares: set fairshare=W"),
        ("priority", {"fairshare": 1, "half_life": -5}, "half_life"),
    ],
)
def test_bad_fairshare_options_are_user_errors(name, options, match):
    with pytest.raises(UserError, match=match):
        policies.get(name, **options)


# --- invariants with users and the non-default options ----------------------------------


@st.composite
def rounds_with_users(draw: st.DrawFn) -> tuple[float, list[JobView], ClusterView]:
    """The shared suite's random rounds, the jobs spread over 3 users."""
    now, jobs, cluster = draw(rounds())
    users = draw(st.lists(st.sampled_from(["ann", "bob", "cat"]), min_size=len(jobs), max_size=len(jobs)))
    return now, [dataclasses.replace(j, user=u) for j, u in zip(jobs, users)], cluster


VARIANTS = {
    "fairshare": {"shares": {"ann": 3, "bob": 1}},
    "fairshare-preempt": {"shares": {"ann": 3}, "groups": {"bob": "g", "cat": "g"}, "preempt": True},
    "fairshare-preempt-0": {"preempt": True, "preempt_margin": 0},
    "priority-fairshare": {"fairshare": 2.0, "shares": {"bob": 2}},
}


def _policy(label: str):  # noqa: ANN202 - a registered policy
    return policies.get(label.split("-")[0], **VARIANTS[label])


@pytest.mark.parametrize("label", sorted(VARIANTS))
@SETTINGS
@given(case=rounds_with_users(), later=st.floats(0, 5000))
def test_fair_share_decisions_keep_the_invariants_over_rounds(label, case, later):
    now, jobs, cluster = case
    policy = _policy(label)
    decision = policy.schedule(now, jobs, cluster)
    check_decision(decision, jobs, cluster)
    sizes = cluster.sizes
    for j in jobs:
        if holds_valid(j, sizes):
            got = decision.allocation(j.id)
            if not j.preemptible or label == "fairshare":  # without preempt, every running job stays
                assert got == j.allocation, f"{label} moved {j.id}"
            if got and got.num_devices == j.allocation.num_devices:
                assert got == j.allocation
    # The same round again: the same decision.
    assert policy.schedule(now, jobs, cluster) == decision
    # A later round, with usage carried over: still valid.
    again = policy.schedule(now + later, jobs, cluster)
    check_decision(again, jobs, cluster)


@SETTINGS
@given(case=rounds_with_users())
def test_fairshare_preempts_only_for_users_with_a_factor_higher_by_the_margin(case):
    now, jobs, cluster = case
    policy = policies.get("fairshare", preempt=True, preempt_margin=1.0)
    decision = policy.schedule(now, jobs, cluster)
    factor = policy.factors(jobs)
    sizes = cluster.sizes
    started = [j for j in jobs if j.id in decision.allocations and not holds_valid(j, sizes)]
    for j in jobs:
        if holds_valid(j, sizes) and j.id not in decision.allocations:
            assert j.preemptible
            assert any(factor[s.user] > 2 * factor[j.user] for s in started), f"{j.id} preempted for no one"


@SETTINGS
@given(case=rounds_with_users())
def test_priority_with_fairshare_still_preempts_only_for_strictly_higher_priority(case):
    now, jobs, cluster = case
    decision = policies.get("priority", fairshare=5.0).schedule(now, jobs, cluster)
    sizes = cluster.sizes
    started = [j for j in jobs if j.id in decision.allocations and not holds_valid(j, sizes)]
    for j in jobs:
        if holds_valid(j, sizes) and j.id not in decision.allocations:
            assert j.preemptible
            assert any(s.priority > j.priority for s in started), f"{j.id} preempted for no one above it"
