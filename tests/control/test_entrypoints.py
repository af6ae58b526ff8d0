"""Job entrypoints `python -m pkg.mod ...` and `python -u x.py ...` run under the local executor.

They used to be accepted at submit and then fail every run.
"""

from __future__ import annotations

import shlex
import time

import pytest

from corral.control.executors.base import Ending
from corral.control.executors.local import NODE, LocalExecutor
from corral.sched.types import Allocation
from tests.conftest import ROOT

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "entrypoint",
    [
        "python -m tests.runtime.workers.torchrun_style",
        "python -u tests/runtime/workers/torchrun_style.py",
        "python3 -u -m tests.runtime.workers.torchrun_style",
    ],
)
def test_python_entrypoints_succeed_under_the_local_executor(tmp_path, entrypoint: str) -> None:
    ex = LocalExecutor(devices=2, home=tmp_path)
    handle = ex.start(
        1, 0, shlex.split(entrypoint), Allocation.of({NODE: [0, 1]}), env={"OMP_NUM_THREADS": "1"}, workdir=str(ROOT)
    )
    deadline = time.monotonic() + 60
    while not (ended := ex.poll()):
        assert time.monotonic() < deadline, ex.log_tail(1, 20)
        time.sleep(0.1)
    assert ended[0].handle == handle
    assert ended[0].ending == Ending.SUCCEEDED, ex.log_tail(1, 20)
    for rank in (0, 1):
        assert f"sum=3 rank={rank} local={rank}" in ex.read_log(1, rank).decode()
