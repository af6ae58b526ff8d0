"""Bad input to the service's CLI and API never reaches a traceback or a 5xx: one `error:` line and exit 2,
or a 4xx naming the field, and nothing changes (issue 14)."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from sqlalchemy.exc import IntegrityError

from corral.control.client import resolve_server, resolve_token
from corral.control.server import free_port
from corral.errors import UserError
from tests.control import test_cli as shared
from tests.control.conftest import LiveServer
from tests.control.test_cli import Result, count_jobs, count_users, refused, write_spec

cli = shared.cli  # the CLI in this process, and a live API whose loop is stopped (fixtures)
idle = shared.idle
API = "/api/v1"


# -- job files -----------------------------------------------------------------------


def test_a_job_file_that_is_not_utf8_is_one_line(idle: LiveServer, cli: Callable[..., Result], tmp_path: Path) -> None:
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"name: caf\xe9\nentrypoint: python -c pass\n")
    refused(cli("submit", str(latin), env=idle.env()), str(latin), "not UTF-8", "byte 0xe9")
    binary = tmp_path / "job.json"
    binary.write_bytes(bytes(range(256)))
    refused(cli("submit", str(binary), env=idle.env()), str(binary), "not UTF-8")
    assert count_jobs(idle) == 0


def test_a_job_file_with_a_utf8_bom_is_read(idle: LiveServer, cli: Callable[..., Result], tmp_path: Path) -> None:
    for name, text in (("bom.yaml", "name: bom\nentrypoint: python -c pass\n"),
                       ("bom.json", '{"name": "bom", "entrypoint": "python -c pass"}')):  # fmt: skip
        (tmp_path / name).write_bytes(b"\xef\xbb\xbf" + text.encode())
        r = cli("submit", str(tmp_path / name), env=idle.env())
        assert r.code == 0, r.err
    assert count_jobs(idle) == 2


def test_a_job_file_that_cannot_be_read_is_one_line(
    idle: LiveServer,
    cli: Callable[..., Result],
    tmp_path: Path,
) -> None:
    folder = tmp_path / "job.yaml"
    folder.mkdir()
    refused(cli("submit", str(folder), env=idle.env()), str(folder), "is a folder")
    refused(cli("submit", str(tmp_path / ("x" * 300 + ".yaml")), env=idle.env()), "cannot read job file")
    loop = tmp_path / "loop.yaml"
    loop.symlink_to(loop)
    refused(cli("submit", str(loop), env=idle.env()), "cannot read job file", str(loop))
    if os.geteuid() != 0:  # root reads any file
        locked = write_spec(tmp_path / "locked.yaml")
        locked.chmod(0)
        refused(cli("submit", str(locked), env=idle.env()), "cannot read job file", "Permission denied")
    assert count_jobs(idle) == 0


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("[" * 100_000 + "]" * 100_000, ("nested too deeply",)),
        ("name: a\nentrypoint: python x.py\nworkdir: ~no-such-user-here/x\n", ("workdir", "no-such-user-here")),
        ("name: a\nentrypoint: python " + "s" * 300 + ".py\n", ("entrypoint",)),
        ("name: a\nentrypoint: python x.py\nworkdir: " + "w" * 300 + "\n", ("workdir",)),
        ('name: a\nentrypoint: "python x.py \\0"\n', ("entrypoint", "NUL")),
        ('name: a\nentrypoint: python x.py\nenv: {"A=B": "1"}\n', ("env", "A=B")),
        ("name: a\nentrypoint: python x.py\nenv: {'': '1'}\n", ("env",)),
    ],
)
def test_job_files_that_once_crashed_submit(
    idle: LiveServer,
    cli: Callable[..., Result],
    tmp_path: Path,
    text: str,
    fragments: tuple[str, ...],
) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(text)
    refused(cli("submit", str(job), env=idle.env()), *fragments)
    js = tmp_path / "job.json"
    js.write_text(text if text.startswith("[") else "")
    refused(cli("submit", str(js), env=idle.env()))
    assert count_jobs(idle) == 0


# -- the server's home -----------------------------------------------------------------


def test_server_home_on_a_file_is_one_line(cli: Callable[..., Result], tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.write_text("not a folder")
    base = ["server", "--port", str(free_port()), "--devices", "2"]
    refused(cli(*base, "--home", str(home)), "--home", str(home), "not a folder")
    refused(cli(*base, "--home", str(home / "sub")), "--home", str(home / "sub"))
    assert home.read_text() == "not a folder"


# -- --server and tokens ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("http://127.0.0.1:99999", "port"),
        ("http://127.0.0.1:65536", "port"),
        ("127.0.0.1:70000", "port"),
        ("http://127.0.0.1:abc", "port"),
        ("http://[::1", "not a valid URL"),
        ("http://", "no host"),
        ("ftp://example.org", "http:// or https://"),
        ("http://a b", "not a valid URL"),
        ("http://host:1/\x07", "not a valid URL"),
        ("http://\u2603\u2603.:1", "not a valid URL"),
    ],
)
def test_a_malformed_server_url_is_one_line(
    cli: Callable[..., Result],
    tmp_path: Path,
    url: str,
    fragment: str,
) -> None:
    job = write_spec(tmp_path / "job.yaml")
    for args in (["jobs"], ["submit", str(job)], ["logs", "1", "-f"], ["token", "create", "bob"]):
        refused(cli(*args, "--server", url, "--token", "t"), "--server", fragment)
        refused(cli(*args, env={"CORRAL_SERVER": url, "CORRAL_TOKEN": "t"}), "CORRAL_SERVER", fragment)
    with pytest.raises(UserError, match=fragment):
        resolve_server(url)


def test_good_server_urls_still_resolve() -> None:
    assert resolve_server("localhost:8765") == "http://localhost:8765"
    assert resolve_server("https://corral.example.org/") == "https://corral.example.org"
    assert resolve_server("http://[::1]:8765") == "http://[::1]:8765"


def test_a_token_with_non_ascii_characters_is_one_line(
    idle: LiveServer,
    cli: Callable[..., Result],
    tmp_path: Path,
) -> None:
    job = write_spec(tmp_path / "job.yaml")
    before = count_jobs(idle), count_users(idle)
    for args in (["jobs"], ["submit", str(job)], ["logs", "1", "-f"], ["token", "create", "bob"]):
        line = refused(cli(*args, "--token", "t\u00f6ken", env={"CORRAL_SERVER": idle.url}), "--token", "non-ASCII")
        assert "t\u00f6ken" not in line  # a token is a secret: never echoed
        refused(cli(*args, env=idle.env("t\u00f6ken")), "CORRAL_TOKEN", "non-ASCII")
        refused(cli(*args, env=idle.env("tok\nen")), "CORRAL_TOKEN", "control")
    home = tmp_path / "cli-home"
    home.mkdir()
    (home / "token").write_bytes("\u20ac-token\n".encode())
    refused(cli("jobs", env={"CORRAL_SERVER": idle.url}), str(home / "token"), "non-ASCII")
    (home / "token").write_bytes(b"\xff\xfe-token\n")
    refused(cli("jobs", env={"CORRAL_SERVER": idle.url}), str(home / "token"), "not UTF-8")
    assert (count_jobs(idle), count_users(idle)) == before
    with pytest.raises(UserError, match="non-ASCII"):
        resolve_token("\u00e9")


def _raw(url: str, method: str, path: str, authorization: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """Send one request with raw header bytes (httpx refuses non-ASCII header values) and read the answer."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(
            f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n".encode()
            + b"Authorization: "
            + authorization
            + f"\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, payload = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), payload


def test_an_authorization_header_with_non_ascii_bytes_is_401(idle: LiveServer) -> None:
    job = b'{"name": "a", "entrypoint": "python -c pass"}'
    before = count_jobs(idle), count_users(idle)
    for auth in (b"Bearer t\xc3\xb6ken", b"Bearer \xff\xfe", b"Bearer " + idle.token.encode() + b"\xe9"):
        for method, path, body in (
            ("GET", f"{API}/whoami", b""),
            ("GET", f"{API}/jobs", b""),
            ("POST", f"{API}/jobs", job),
            ("POST", f"{API}/users", b'{"name": "zed"}'),
            ("POST", f"{API}/jobs/1/metrics", b'{"records": [{"step": 1, "values": {}}]}'),
        ):
            status, payload = _raw(idle.url, method, path, auth, body)
            assert status == 401 if path != f"{API}/jobs/1/metrics" else status in (401, 404), (auth, path, payload)
            assert b"token" in payload or b"no job" in payload, payload
    assert (count_jobs(idle), count_users(idle)) == before


# -- users -----------------------------------------------------------------------------------


def test_concurrent_posts_of_one_user_name_never_answer_500(idle: LiveServer) -> None:
    """Creating a user that exists re-keys it (the documented contract), so racing creations all succeed
    as if one came after the other; none is a 500."""
    n = 8
    barrier = threading.Barrier(n)
    answers: list[httpx.Response] = []

    def create() -> None:
        with idle.client() as c:
            barrier.wait()
            answers.append(c.post(f"{API}/users", json={"name": "twin"}))

    threads = [threading.Thread(target=create) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.status_code for r in answers) == [201] * n, [r.text for r in answers]
    valid = [r for r in answers if idle.client(r.json()["token"]).get(f"{API}/whoami").status_code == 200]
    assert len(valid) == 1


def test_a_unique_name_conflict_the_store_cannot_resolve_is_409_naming_the_user(
    idle: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def conflict(name: str, **_: object) -> tuple[str, bool]:
        raise IntegrityError("INSERT INTO users", {}, Exception("UNIQUE constraint failed: users.name"))

    users = count_users(idle)
    monkeypatch.setattr(idle.service.store, "create_or_rekey_user", conflict)
    r = idle.client().post(f"{API}/users", json={"name": "twin"})
    assert r.status_code == 409, r.text
    assert r.json()["detail"] == "name: user 'twin' is being created by another request; try again"
    monkeypatch.undo()
    assert count_users(idle) == users
