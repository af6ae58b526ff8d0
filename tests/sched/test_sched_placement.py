"""Placers: pack uses the fewest nodes, spread spreads, random is reproducible; all keep and gang."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sched_helpers import alloc

from corral.errors import UserError
from corral.sched.placement import available_placers, get_placer
from corral.sched.types import ClusterView, Node, Placer


def dicts(placed):
    return {job_id: a.as_dict() for job_id, a in placed.items()}


def test_pack_best_fit_then_largest_nodes_first():
    # 3 nodes x 4, demands in order:
    # a 3: every node has 4 free -> lowest index: n0:[0,1,2] (n0 has 1 left).
    # b 2: smallest free count that holds 2 is 4 (n1, n2) -> n1:[0,1] (n1: 2 left).
    # c 4: only n2 holds 4 -> n2.
    # d 3: no node holds 3 (n0 1, n1 2): the most free first, n1:[2,3], then the
    #      best fit for the last 1, n0:[3].
    placed = get_placer("pack").place({"a": 3, "b": 2, "c": 4, "d": 3}, ClusterView.uniform(3, 4))
    assert dicts(placed) == {
        "a": {"n0": [0, 1, 2]},
        "b": {"n1": [0, 1]},
        "c": {"n2": [0, 1, 2, 3]},
        "d": {"n0": [3], "n1": [2, 3]},
    }


def test_pack_fills_fragments_before_empty_nodes():
    # n0 has 1 free (3 kept), n1 is empty: a 1-device job goes into n0's hole.
    cluster = ClusterView.uniform(2, 4)
    placed = get_placer("pack").place({"k": 3, "x": 1}, cluster, keep={"k": alloc(n0=[0, 1, 2])})
    assert dicts(placed) == {"k": {"n0": [0, 1, 2]}, "x": {"n0": [3]}}


@settings(max_examples=100, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 8), min_size=1, max_size=6),
    used=st.lists(st.integers(0, 8), min_size=6, max_size=6),
    data=st.data(),
)
def test_pack_uses_the_fewest_nodes_possible(sizes, used, data):
    cluster = ClusterView(tuple(Node(f"n{i}", s) for i, s in enumerate(sizes)))
    keep = {f"k{i}": alloc(**{f"n{i}": range(min(u, s))}) for i, (s, u) in enumerate(zip(sizes, used, strict=False))}
    keep = {j: a for j, a in keep.items() if a}
    frees = sorted((s - min(u, s) for s, u in zip(sizes, used, strict=False)), reverse=True)
    if sum(frees) == 0:
        return
    k = data.draw(st.integers(1, sum(frees)))
    demands = {j: a.num_devices for j, a in keep.items()} | {"new": k}
    placed = get_placer("pack").place(demands, cluster, keep)
    fewest = next(n for n in range(1, len(frees) + 1) if sum(frees[:n]) >= k)
    assert placed["new"].num_devices == k
    assert placed["new"].num_nodes == fewest
    assert all(placed[j] == a for j, a in keep.items())


def test_spread_puts_each_device_on_another_node():
    cluster = ClusterView.uniform(4, 4)
    placed = get_placer("spread").place({"a": 4, "b": 6}, cluster)
    # a: one device on each node. b: one on each (all have 3 free), then round two.
    assert dicts(placed)["a"] == {"n0": [0], "n1": [0], "n2": [0], "n3": [0]}
    assert placed["b"].num_nodes == 4
    assert sorted(placed["b"].per_node()) == [1, 1, 2, 2]


def test_spread_prefers_the_emptiest_nodes():
    # n0 has 1 free, n1 has 4: the first device goes to n1, the second to n0.
    cluster = ClusterView.uniform(2, 4)
    placed = get_placer("spread").place({"k": 3, "x": 2}, cluster, keep={"k": alloc(n0=[0, 1, 2])})
    assert dicts(placed)["x"] == {"n0": [3], "n1": [0]}


def test_random_is_deterministic_by_seed():
    cluster = ClusterView.uniform(8, 4)
    demands = {"a": 5, "b": 3, "c": 7}
    first = get_placer("random", seed=7).place(demands, cluster)
    assert get_placer("random", seed=7).place(demands, cluster) == first
    placer = get_placer("random", seed=7)
    assert placer.place(demands, cluster) == placer.place(demands, cluster)  # no state across calls
    others = [get_placer("random", seed=s).place(demands, cluster) for s in range(1, 6)]
    assert any(o != first for o in others)
    devices = [d for a in first.values() for d in a.devices()]
    assert len(devices) == len(set(devices)) == 15


@pytest.mark.parametrize("name", available_placers())
def test_keep_shrink_and_gang(name):
    cluster = ClusterView.uniform(2, 4)
    keep = {"same": alloc(n0=[0, 1]), "shrink": alloc(n0=[2, 3], n1=[0, 1, 2])}
    # same keeps its devices; shrink (5 -> 3) keeps 3 of its own, from its fuller
    # node n1 first; big (4) does not fit the 2 free devices and is left out
    # (all or nothing); small (1) still gets one.
    placed = get_placer(name).place({"same": 2, "shrink": 3, "big": 4, "small": 1}, cluster, keep)
    assert placed["same"] == keep["same"]
    assert placed["shrink"].as_dict() == {"n1": [0, 1, 2]}
    assert "big" not in placed
    assert placed["small"].num_devices == 1
    assert set(placed["small"].devices()) <= {("n0", 2), ("n0", 3), ("n1", 3)}


@pytest.mark.parametrize("name", available_placers())
def test_invalid_keep_is_placed_afresh(name):
    # A kept allocation on a missing node, or clashing with another, is not honoured.
    cluster = ClusterView.uniform(1, 4)
    keep = {"a": alloc(n0=[0, 1]), "b": alloc(n0=[1, 2]), "c": alloc(gone=[0])}
    placed = get_placer(name).place({"a": 2, "b": 2, "c": 1}, cluster, keep)
    assert placed.get("a") == keep["a"]
    devices = [d for a in placed.values() for d in a.devices()]
    assert len(devices) == len(set(devices))
    assert all(node == "n0" for node, _ in devices)


def test_registry():
    assert available_placers() == ["pack", "random", "spread"]
    for name in available_placers():
        assert isinstance(get_placer(name), Placer)
    with pytest.raises(UserError, match="pack, random, spread"):
        get_placer("tight")
    with pytest.raises(UserError, match="placer 'pack'"):
        get_placer("pack", seed=1)
