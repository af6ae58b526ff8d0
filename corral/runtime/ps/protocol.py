"""Message framing between workers and servers: gloo point-to-point over TCP.

Workers are ranks 0..N-1 and servers ranks N..N+S-1 of one private gloo group
(built over the launcher's store under the prefix "corral-ps"), so the
workers' own default process group keeps WORLD_SIZE = N for the user's code.

The hot path is one message each way: a *frame*, a uint8 buffer holding an
int64 header (op, sender, a, b, c) and then the shard's values or gradients,
one typed block per dtype (8-byte aligned views into the same buffer). Every
message a worker sends a server after INIT is a frame of that server's size,
so the server receives from any source into a frame and reads the sender from
its header; a reply frame's blocks are the worker's parameters themselves.
Objects (INIT, hyperparameters, snapshots) travel pickled on TAG_DATA, their
length announced by a header. gloo keeps messages between two ranks on one
tag in order.
"""

from __future__ import annotations

import datetime as dt
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import torch
import torch.distributed as dist

TAG_FRAME = 0  # frames, both directions
TAG_DATA = 1  # pickled objects
TAG_SMALL = 2  # a bare header announcing an object (INIT to a server, STATE to rank 0)
HEADER_LEN = 5
HEADER_BYTES = HEADER_LEN * 8
STORE_PREFIX = "corral-ps"
# The launcher, not a timeout, detects a dead peer (it stops the whole gang), and
# servers legitimately wait as long as workers evaluate between epochs.
TIMEOUT = dt.timedelta(seconds=float(os.environ.get("CORRAL_PS_TIMEOUT_S", 24 * 3600)))


class Op(IntEnum):
    """Message kinds; worker -> server unless noted."""

    INIT = 1  # rank 0: shard values, optimizer spec and state (pickled)
    PUSH = 2  # gradients of the shard (a: the worker's step)
    PULL = 3  # ask for the current values
    HPARAMS = 4  # changed optimizer hyperparameters (pickled), e.g. from an LR scheduler
    SNAPSHOT = 5  # rank 0: ask for values + optimizer state, for a checkpoint
    SHUTDOWN = 6  # rank 0: the job is done with the servers
    REPLY = 7  # server -> worker: current values (a: updates applied so far)
    STATE = 8  # server -> rank 0: snapshot (pickled)


@dataclass(frozen=True)
class Block:
    """One dtype's part of a shard: which shard tensors it holds, where, and its length."""

    dtype: torch.dtype
    members: tuple[tuple[int, int, int], ...]  # (position in the shard, offset, numel)
    numel: int


def layout(shapes: Sequence[Sequence[int]], dtypes: Sequence[torch.dtype]) -> list[Block]:
    """Flat layout of a shard: one block per dtype (in order of first use), tensors in shard order."""
    blocks: dict[torch.dtype, list[tuple[int, int, int]]] = {}
    sizes: dict[torch.dtype, int] = {}
    for i, (shape, dtype) in enumerate(zip(shapes, dtypes, strict=True)):
        n = 1
        for d in shape:
            n *= int(d)
        blocks.setdefault(dtype, []).append((i, sizes.get(dtype, 0), n))
        sizes[dtype] = sizes.get(dtype, 0) + n
    return [Block(d, tuple(m), sizes[d]) for d, m in blocks.items()]


class Frame:
    """A header and one typed block per dtype, in one contiguous uint8 buffer (one gloo message)."""

    def __init__(self, blocks: Sequence[Block]) -> None:
        offsets = []
        size = HEADER_BYTES
        for b in blocks:
            offsets.append(size)
            size += -(-b.numel * b.dtype.itemsize // 8) * 8  # keep every block 8-byte aligned
        self.buf = torch.zeros(size, dtype=torch.uint8)
        self.header = self.buf[:HEADER_BYTES].view(torch.int64)
        self.blocks = [self.buf[o : o + b.numel * b.dtype.itemsize].view(b.dtype) for o, b in zip(offsets, blocks)]

    def set(self, op: Op, sender: int, a: int = 0, b: int = 0, c: int = 0) -> Frame:
        """Write the header; return self."""
        self.header.copy_(torch.tensor([int(op), sender, a, b, c], dtype=torch.int64))
        return self

    def fields(self) -> list[int]:
        """The header as ints: op, sender, a, b, c."""
        return self.header.tolist()

    def send(self, pg: Any, dst: int) -> Any:
        """Start sending the frame to `dst`; return the work."""
        return pg.send([self.buf], dst, TAG_FRAME)

    def recv(self, pg: Any, src: int) -> Any:
        """Start receiving a frame from `src`; return the work."""
        return pg.recv([self.buf], src, TAG_FRAME)

    def recv_any(self, pg: Any) -> Any:
        """Start receiving a frame from any rank (the header says which)."""
        return pg.recv_anysource([self.buf], TAG_FRAME)


def connect(rank: int, size: int) -> tuple[dist.Store, Any]:
    """Join the PS group as `rank` of `size`, through the store the launcher hosts."""
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False, timeout=TIMEOUT)
    # ProcessGroupGloo reads GLOO_SOCKET_IFNAME like init_process_group does.
    pg = dist.ProcessGroupGloo(dist.PrefixStore(STORE_PREFIX, store), rank, size, TIMEOUT)
    return store, pg


def header(op: Op, sender: int, a: int = 0, b: int = 0, c: int = 0) -> torch.Tensor:
    """A bare header (for TAG_SMALL)."""
    return torch.tensor([int(op), sender, a, b, c], dtype=torch.int64)


def empty_header() -> torch.Tensor:
    """A buffer to receive a bare header into."""
    return torch.zeros(HEADER_LEN, dtype=torch.int64)


def encode(obj: Any) -> torch.Tensor:
    """`obj` pickled (torch.save) into a uint8 tensor."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)


def decode(data: torch.Tensor) -> Any:
    """The object `encode` wrote into `data`."""
    return torch.load(io.BytesIO(data.numpy().tobytes()), weights_only=False)


def wait(works: Sequence[Any]) -> None:
    """Wait for every work to complete."""
    for w in works:
        w.wait()


def send_data(pg: Any, dst: int, data: torch.Tensor) -> Any:
    """Start sending a pickled object's bytes to `dst`."""
    return pg.send([data], dst, TAG_DATA)


def recv_data(pg: Any, src: int, nbytes: int) -> Any:
    """Receive `nbytes` of a pickled object from `src` and unpickle it."""
    data = torch.empty(nbytes, dtype=torch.uint8)
    pg.recv([data], src, TAG_DATA).wait()
    return decode(data)


def send_small(pg: Any, dst: int, op: Op, sender: int, obj: Any) -> None:
    """Send a bare header announcing a pickled object, then the object; wait until received."""
    data = encode(obj)
    wait([pg.send([header(op, sender, data.numel())], dst, TAG_SMALL), send_data(pg, dst, data)])


def recv_small(pg: Any, src: int) -> tuple[list[int], Any]:
    """Receive what `send_small` sent: the header fields and the object."""
    hdr = empty_header()
    pg.recv([hdr], src, TAG_SMALL).wait()
    fields = hdr.tolist()
    return fields, recv_data(pg, src, fields[2])
