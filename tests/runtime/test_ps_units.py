"""Parameter server, pure parts: sharding, consistency parsing, the server's clock gate, message layout."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.errors import UserError
from corral.runtime.ps.consistency import ClockGate, Consistency, parse_consistency
from corral.runtime.ps.protocol import decode, encode, layout
from corral.runtime.ps.sharding import assign, hash_owners, range_owners, shards, stable_name_hash

sizes_st = st.lists(st.integers(min_value=0, max_value=10_000), min_size=0, max_size=60)


@settings(max_examples=300, deadline=None)
@given(sizes=sizes_st, servers=st.integers(min_value=1, max_value=9), kind=st.sampled_from(["range", "hash"]))
def test_every_parameter_on_exactly_one_server(sizes, servers, kind) -> None:
    names = [f"layer{i}.weight" for i in range(len(sizes))]
    owners = assign(names, sizes, servers, kind)
    parts = shards(owners, servers)
    assert sorted(i for part in parts for i in part) == list(range(len(sizes)))
    assert all(0 <= k < servers for k in owners)


@settings(max_examples=300, deadline=None)
@given(sizes=sizes_st, servers=st.integers(min_value=1, max_value=9))
def test_range_shards_are_contiguous_and_within_one_tensor_of_the_ideal(sizes, servers) -> None:
    owners = range_owners(sizes, servers)
    assert owners == sorted(owners)  # contiguous blocks, in parameter order
    ideal = sum(sizes) / servers
    biggest = max(sizes, default=0)
    for k in range(servers):
        load = sum(s for s, o in zip(sizes, owners) if o == k)
        assert abs(load - ideal) <= biggest + 1e-9, (k, load, ideal, biggest)


def test_range_balances_a_real_model() -> None:
    from torch import nn

    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    sizes = [p.numel() for p in model.parameters()]
    owners = range_owners(sizes, 2)
    loads = [sum(s for s, o in zip(sizes, owners) if o == k) for k in range(2)]
    assert owners == [0, 0, 1, 1, 1, 1]  # the cut nearest to half of 84,002 values: after layer 1
    assert abs(loads[0] - loads[1]) <= max(sizes)


def test_hash_is_blake2b_of_the_name_and_stable() -> None:
    import hashlib

    name = "encoder.layers.3.attn.q_proj.weight"
    assert stable_name_hash(name) == int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little")
    # Fixed across processes and runs (Python's own hash is salted per process).
    assert hash_owners(["a.weight", "a.bias", "b.weight", "b.bias"], 3) == [
        stable_name_hash(n) % 3 for n in ["a.weight", "a.bias", "b.weight", "b.bias"]
    ]
    # A parameter's server depends only on its name, not on its neighbours.
    assert hash_owners(["x", "a.weight"], 5)[1] == hash_owners(["a.weight"], 5)[0]


def test_bad_sharding_and_server_count_are_user_errors() -> None:
    with pytest.raises(UserError, match="unknown sharding 'round-robin'; choose one of: range, hash"):
        assign(["w"], [1], 2, "round-robin")
    with pytest.raises(UserError, match="servers must be >= 1"):
        range_owners([1, 2], 0)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("bsp", Consistency("bsp")),
        ("asp", Consistency("asp")),
        ("ssp:0", Consistency("ssp", 0)),
        ("ssp:3", Consistency("ssp", 3)),
    ],
)
def test_parse_consistency(spec, expected) -> None:
    assert parse_consistency(spec) == expected
    assert str(parse_consistency(spec)) == spec


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("ssp", "consistency 'ssp' needs a staleness bound"),
        ("ssp:x", "must be an integer >= 0"),
        ("ssp:-1", "must be an integer >= 0"),
        ("eventual", "unknown consistency 'eventual'"),
        (None, "unknown"),
    ],
)
def test_bad_consistency_is_a_user_error(spec, message) -> None:
    with pytest.raises(UserError, match=message):
        parse_consistency(spec)


def _simulate(gate: ClockGate, workers: int, speeds: list[int], pushes: int, seed: int) -> list[int]:
    """Workers push when ready; a worker waits for its reply before pushing again. Returns steps done."""
    rng = random.Random(seed)
    ready = set(range(workers))
    done = [0] * workers
    for _ in range(pushes):
        if not ready:
            raise AssertionError("deadlock: every worker waits for a reply")
        # A slow worker is picked less often (straggler).
        w = rng.choices(sorted(ready), weights=[speeds[i] for i in sorted(ready)])[0]
        ready.discard(w)
        for v in gate.push(w):
            ready.add(v)
            done[v] += 1
    return done


@settings(max_examples=200, deadline=None)
@given(workers=st.integers(1, 6), s=st.integers(0, 4), seed=st.integers(0, 10_000))
def test_ssp_gate_keeps_every_worker_within_s_steps_and_never_deadlocks(workers, s, seed) -> None:
    gate = ClockGate(workers, Consistency("ssp", s))
    speeds = [1] + [5] * (workers - 1)  # worker 0 is a straggler
    done = _simulate(gate, workers, speeds, 400, seed)
    assert gate.max_spread() <= s
    assert max(done) - min(done) <= s
    assert gate.replies() == sum(done)


def test_ssp_gate_defers_the_fast_worker_until_the_slowest_catches_up() -> None:
    gate = ClockGate(2, Consistency("ssp", 1))
    assert gate.push(1) == [1]  # clocks 0, 1
    assert gate.push(1) == []  # would be 2 ahead: deferred
    assert gate.deferred == 1
    assert gate.push(0) == [0, 1]  # the slowest catches up: both answered, clocks 1, 2
    assert gate.clock == [1, 2] and gate.max_spread() == 1


def test_bsp_gate_answers_everyone_together_and_asp_at_once() -> None:
    bsp = ClockGate(3, Consistency("bsp"))
    assert bsp.push(2) == [] and bsp.push(0) == []
    assert bsp.push(1) == [0, 1, 2]
    assert bsp.spreads == {0: 3}
    asp = ClockGate(3, Consistency("asp"))
    assert [asp.push(0) for _ in range(5)] == [[0]] * 5
    assert asp.max_spread() == 5 and asp.deferred == 0


def test_layout_groups_by_dtype_and_pickles_round_trip() -> None:
    blocks = layout([(2, 3), (4,), (5,)], [torch.float32, torch.float64, torch.float32])
    assert [(b.dtype, b.members, b.numel) for b in blocks] == [
        (torch.float32, ((0, 0, 6), (2, 6, 5)), 11),
        (torch.float64, ((1, 0, 4),), 4),
    ]
    obj = {"values": [torch.arange(3.0)], "lr": 0.1}
    back = decode(encode(obj))
    assert back["lr"] == 0.1 and torch.equal(back["values"][0], obj["values"][0])


def test_ps_options_are_checked_before_anything_starts(monkeypatch) -> None:
    import corral

    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "CORRAL_PS_SERVERS"):
        monkeypatch.delenv(name, raising=False)
    cases = [
        ({"servers": 0}, "servers must be an integer >= 1, got 0"),
        ({"consistency": "ssp"}, "needs a staleness bound"),
        ({"consistency": "causal"}, "unknown consistency 'causal'"),
        ({"sharding": "random"}, "unknown sharding 'random'"),
        ({"consistancy": "bsp"}, "unknown option(s) for strategy 'ps': consistancy"),
        ({}, "strategy 'ps' needs parameter servers: start the job with `corral run --servers S"),
    ]
    for kwargs, message in cases:
        with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
            corral.init(strategy="ps", **kwargs)
    monkeypatch.setenv("CORRAL_PS_SERVERS", "3")
    with pytest.raises(UserError, match=r"corral.init\(servers=2\) but `corral run` started 3 server"):
        corral.init(strategy="ps", servers=2)
    assert not torch.distributed.is_initialized()


def test_frame_is_one_buffer_with_an_aligned_header_and_typed_blocks() -> None:
    from corral.runtime.ps.protocol import Frame, Op

    blocks = layout([(3,), (2, 2), (1,)], [torch.float32, torch.float64, torch.bfloat16])
    frame = Frame(blocks)
    frame.set(Op.PUSH, 3, 17)
    frame.blocks[0].copy_(torch.tensor([1.0, 2.0, 3.0]))
    frame.blocks[1].fill_(0.5)
    frame.blocks[2].fill_(-1)
    assert frame.fields() == [int(Op.PUSH), 3, 17, 0, 0]
    assert [b.dtype for b in frame.blocks] == [torch.float32, torch.float64, torch.bfloat16]
    base = frame.buf.data_ptr()
    assert all((b.data_ptr() - base) % 8 == 0 for b in frame.blocks)  # every block 8-byte aligned
    assert frame.buf.numel() == 40 + 16 + 32 + 8  # header, 3 floats padded to 16, 4 doubles, 1 bf16 padded
    # Blocks are views: what a gloo recv writes into the buffer is what the tensors read.
    copy = Frame(blocks)
    copy.buf.copy_(frame.buf)
    assert copy.fields()[2] == 17 and copy.blocks[0].tolist() == [1.0, 2.0, 3.0]
    assert copy.blocks[1].tolist() == [0.5] * 4 and copy.blocks[2].tolist() == [-1.0]
