"""Partitioners: disjoint, complete, deterministic, balanced; elastic resume sees each sample once."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.errors import UserError
from corral.runtime.partition import (
    PARTITIONS,
    EpochPlan,
    Segment,
    epoch_order,
    partition,
    remaining,
    stable_hash,
)

sizes = st.integers(min_value=0, max_value=300)
worlds = st.integers(min_value=1, max_value=9)
kinds = st.sampled_from(PARTITIONS)
SETTINGS = settings(max_examples=80, deadline=None)


def _costs(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).pareto(1.5, size=n) + 0.1


@SETTINGS
@given(n=sizes, w=worlds, kind=kinds, seed=st.integers(0, 5), epoch=st.integers(0, 3))
def test_disjoint_complete_deterministic(n: int, w: int, kind: str, seed: int, epoch: int) -> None:
    order = epoch_order(n, seed=seed, epoch=epoch)
    costs = _costs(n, seed)
    parts = partition(order, w, kind, costs=costs)
    again = partition(epoch_order(n, seed=seed, epoch=epoch), w, kind, costs=costs)
    assert len(parts) == w
    flat = np.concatenate(parts)
    assert sorted(flat.tolist()) == list(range(n))  # complete and disjoint
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))  # deterministic


@SETTINGS
@given(n=sizes, w=worlds)
def test_strided_and_range_sizes_differ_by_at_most_one(n: int, w: int) -> None:
    order = epoch_order(n, seed=0, epoch=0)
    for kind in ("strided", "range"):
        lengths = [len(p) for p in partition(order, w, kind)]
        assert max(lengths) - min(lengths) <= 1
    assert [p.tolist() for p in partition(order, w, "strided")] == [order[r::w].tolist() for r in range(w)]
    assert np.array_equal(np.concatenate(partition(order, w, "range")), order)  # contiguous blocks


@SETTINGS
@given(n=st.integers(1, 300), w=worlds, seed=st.integers(0, 50))
def test_balanced_every_rank_within_one_sample_of_mean(n: int, w: int, seed: int) -> None:
    costs = _costs(n, seed)
    order = epoch_order(n, seed=seed, epoch=0)
    loads = [costs[p].sum() for p in partition(order, w, "balanced", costs=costs)]
    mean = costs.sum() / w
    assert all(abs(load - mean) <= costs.max() + 1e-9 for load in loads)


def test_hash_is_stable_and_independent_of_epoch_and_key_function() -> None:
    order0, order1 = epoch_order(100, seed=0, epoch=0), epoch_order(100, seed=0, epoch=1)
    owner = lambda parts: {int(i): r for r, p in enumerate(parts) for i in p}  # noqa: E731
    assert owner(partition(order0, 4, "hash")) == owner(partition(order1, 4, "hash"))
    names = [f"file-{i}.jpg" for i in range(100)]
    by_key = partition(order0, 4, "hash", key=names.__getitem__)
    assert sorted(np.concatenate(by_key).tolist()) == list(range(100))
    # Known values pin the hash: a change would silently move every sample to another rank.
    assert [len(p) for p in partition(np.arange(1000), 4, "hash")] == [260, 241, 244, 255]
    assert stable_hash(np.arange(3)).tolist() == [16294208416658607535, 10451216379200822465, 10905525725756348110]


def test_epochs_differ_and_seed_matters() -> None:
    assert not np.array_equal(epoch_order(50, seed=0, epoch=0), epoch_order(50, seed=0, epoch=1))
    assert not np.array_equal(epoch_order(50, seed=0, epoch=0), epoch_order(50, seed=1, epoch=0))
    assert np.array_equal(epoch_order(5, seed=3, epoch=2, shuffle=False), np.arange(5))


def test_bad_input_is_a_user_error() -> None:
    with pytest.raises(UserError, match="unknown partition 'zigzag'"):
        partition(np.arange(4), 2, "zigzag")
    with pytest.raises(UserError, match="needs a per-sample cost"):
        partition(np.arange(4), 2, "balanced")
    with pytest.raises(UserError, match="world size"):
        partition(np.arange(4), 0, "strided")


def _run_segment(plan_args: dict, w: int, history: tuple[Segment, ...], batches: int) -> tuple[set[int], Segment]:
    """Run `batches` batches on every rank of a world of size w; return the real samples seen."""
    plans = [EpochPlan(rank=r, world_size=w, history=history, **plan_args) for r in range(w)]
    seen: set[int] = set()
    for plan in plans:
        real = plan.parts[plan.rank]
        take = min(batches * plan.batch_size, len(real))
        seen.update(real[:take].tolist())
    return seen, plans[0].consumed_after(batches)


@SETTINGS
@given(
    n=st.integers(1, 200),
    ws=st.lists(worlds, min_size=1, max_size=4),
    b=st.integers(1, 8),
    kind=kinds,
    data=st.data(),
)
def test_elastic_resume_sees_each_remaining_sample_exactly_once(n, ws, b, kind, data) -> None:
    """Stop after k batches at W, resume at W', ... and finish: every sample exactly once."""
    args = dict(n=n, epoch=1, batch_size=b, kind=kind, seed=7, costs=_costs(n, 3))
    history: tuple[Segment, ...] = ()
    seen_all: list[int] = []
    for w in ws:
        plan = EpochPlan(rank=0, world_size=w, history=history, **args)
        k = data.draw(st.integers(0, plan.num_batches))
        seen, seg = _run_segment(args, w, history, k)
        before = set(seen_all)
        assert not (seen & before)  # never twice
        seen_all.extend(seen)
        history = history + (seg,)
    # Finish the epoch at a final world size.
    w_last = data.draw(worlds)
    final = EpochPlan(rank=0, world_size=w_last, history=history, **args)
    seen, _ = _run_segment(args, w_last, history, final.num_batches)
    assert not (seen & set(seen_all))
    assert sorted(seen_all + list(seen)) == list(range(n))  # none skipped
    assert sorted(remaining(n, 1, history, kind=kind, seed=7, costs=args["costs"]).tolist()) == sorted(seen)


@SETTINGS
@given(n=st.integers(0, 120), w=worlds, b=st.integers(1, 9), drop_last=st.booleans(), kind=kinds)
def test_every_rank_runs_the_same_number_of_batches(n, w, b, drop_last, kind) -> None:
    plans = [
        EpochPlan(n=n, epoch=0, rank=r, world_size=w, batch_size=b, kind=kind, drop_last=drop_last, costs=_costs(n, 1))
        for r in range(w)
    ]
    assert len({p.num_batches for p in plans}) == 1  # DDP needs the same number of steps everywhere
    for p in plans:
        real = p.parts[p.rank]
        assert set(p.indices.tolist()) <= set(range(n))
        if drop_last:
            assert len(p.indices) % b == 0 and set(p.indices.tolist()) <= set(real.tolist())
        else:
            # Every real sample is read; a rank repeats samples only to reach the common
            # batch count, and then just enough for one sample in its last batch.
            assert np.array_equal(p.indices[: len(real)], real)
            assert len(p.indices) == max(len(real), (p.num_batches - 1) * b + 1 if p.num_batches else 0)
            if kind in ("strided", "range"):
                assert len(p.indices) - len(real) <= 1


def test_strided_batches_union_to_single_worker_batches() -> None:
    """The reason strided is the default: step t of W workers x B = step t of 1 worker x W*B."""
    one = EpochPlan(n=64, epoch=0, rank=0, world_size=1, batch_size=16)
    two = [EpochPlan(n=64, epoch=0, rank=r, world_size=2, batch_size=8) for r in range(2)]
    for t in range(4):
        assert sorted(one.batch(t).tolist()) == sorted(np.concatenate([p.batch(t) for p in two]).tolist())
