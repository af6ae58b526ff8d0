"""`corral run` with bad input: one `error:` line and exit 2 before anything starts, and a gang whose
start fails midway leaves no rank behind (issue 14)."""

from __future__ import annotations

import errno
import subprocess
from pathlib import Path
from typing import Any

import psutil
import pytest

from corral.runtime import launch as launch_mod
from corral.runtime.commands import run_main
from corral.runtime.launch import MAX_NPROC
from tests.conftest import WORKERS


def one_error_line(capsys: pytest.CaptureFixture[str], *fragments: str) -> str:
    out, err = capsys.readouterr()
    # Once the gang starts, the launcher's own progress lines ("[corral] ...") and the ranks' output may come first.
    lines = [line for line in err.strip().splitlines() if not line.startswith("[")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in out + err
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


def test_log_dir_on_an_existing_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    existing = tmp_path / "logs"
    existing.write_text("keep me")
    assert run_main(["--log-dir", str(existing), str(WORKERS / "torchrun_style.py")]) == 2
    one_error_line(capsys, "--log-dir", str(existing), "not a folder")
    assert existing.read_text() == "keep me"
    under = existing / "sub"
    assert run_main(["--log-dir", str(under), str(WORKERS / "torchrun_style.py")]) == 2
    one_error_line(capsys, "--log-dir", str(under))


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--nproc", str(MAX_NPROC + 1)], f"--nproc must be at most {MAX_NPROC}"),
        (["--nproc", "100000000000"], f"--nproc must be at most {MAX_NPROC}"),
        (["--servers", str(MAX_NPROC + 1)], f"--servers must be at most {MAX_NPROC}"),
    ],
)
def test_nproc_above_the_cap_is_one_line(
    args: list[str], fragment: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    started: list[Any] = []
    monkeypatch.setattr(launch_mod.subprocess, "Popen", lambda *a, **k: started.append(a))
    assert run_main([*args, str(WORKERS / "torchrun_style.py")]) == 2
    one_error_line(capsys, fragment)
    assert started == []


def test_the_nproc_cap_is_in_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_main(["--help"]) == 0
    assert f"at most {MAX_NPROC}" in " ".join(capsys.readouterr().out.split())


def test_a_worker_that_fails_to_start_leaves_no_rank_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ranks 0 and 1 start (and sleep for minutes), rank 2's spawn fails: both are stopped and reaped."""
    real = subprocess.Popen
    started: list[subprocess.Popen[bytes]] = []

    def popen(*args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        if len(started) == 2:
            raise OSError(errno.EAGAIN, "Resource temporarily unavailable")
        proc = real(*args, **kwargs)
        started.append(proc)
        return proc

    monkeypatch.setattr(launch_mod.subprocess, "Popen", popen)
    code = run_main(["--nproc", "4", "--grace-period", "1", "--log-dir", str(tmp_path), str(WORKERS / "sleeper.py")])
    assert code == 2
    one_error_line(capsys, "cannot start rank 2", "Resource temporarily unavailable")
    assert len(started) == 2
    pids = {proc.pid for proc in started}
    for proc in started:
        assert proc.returncode is not None and proc.returncode < 0  # stopped by a signal, and reaped
    assert not pids & {c.pid for c in psutil.Process().children(recursive=True)}
    for pid in pids:  # not even orphaned elsewhere (a pid reused since belongs to another program)
        if psutil.pid_exists(pid):
            assert "sleeper.py" not in " ".join(psutil.Process(pid).cmdline())
