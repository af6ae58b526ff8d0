"""`corral submit JOB.yaml` without typer, pydantic, httpx or rich: the command scripts run in loops.

The full command (corral.control.commands.submit_command) costs about 0.4 s of CPU to start, nearly all
imports. This path reads the job file, checks what the full command checks before it sends anything,
and POSTs the spec with http.client; the server validates it with pydantic anyway. It takes only the
plain case: a spec whose every field is one it can vouch for (`_plain`), the options --server, --token
and --ca-cert. Anything else (--wait, --help, an unknown option, a file that does not read or parse, a
field it does not know, a spec the server refuses as invalid) returns None before a job can have been
queued, and the full command runs instead: same checks, same messages, same exit codes.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from corral.control import endpoint
from corral.errors import UserError, one_line

OPTIONS = ("--server", "--token", "--ca-cert")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class _Fallback(Exception):
    """The full command handles this call."""


def submit(argv: list[str]) -> int | None:
    """`corral submit ARGV` on the fast path: its exit code, or None when the full command must run it."""
    try:
        return _submit(argv)
    except _Fallback:
        return None
    except UserError as exc:
        print(f"error: {one_line(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


def resolve_workdir(workdir: str | None, job_file: Path) -> str:
    """The spec's workdir made absolute: relative to the job file's folder; none means the current folder."""
    if workdir is None:
        return str(Path.cwd())
    try:
        path = Path(workdir).expanduser()
    except RuntimeError:  # ~user of no known user
        raise UserError(f"{job_file}: workdir: cannot expand {workdir!r}: no such user") from None
    if not path.is_absolute():
        path = job_file.resolve().parent / path
    if not _is(path, "dir"):
        raise UserError(f"{job_file}: workdir: folder not found: {path}")
    return str(path.resolve())


def check_script(argv: list[str], workdir: str, job_file: Path) -> None:
    """Refuse `python missing.py` before queueing a job that could only fail."""
    if len(argv) > 1 and Path(argv[0]).name.startswith("python") and argv[1].endswith(".py"):
        script = Path(workdir) / argv[1]
        if not _is(script, "file"):
            raise UserError(f"{job_file}: entrypoint: script not found: {script}")


def _is(path: Path, kind: str) -> bool:
    """`path.is_dir()` / `is_file()`, False where the path cannot even be looked at (a name too long)."""
    try:
        return path.is_dir() if kind == "dir" else path.is_file()
    except OSError:
        return False


def _options(argv: list[str]) -> tuple[Path, dict[str, str]]:
    """The job file and the options given; _Fallback for anything but `FILE [--server|--token|--ca-cert V]`."""
    files: list[str] = []
    given: dict[str, str] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("-"):
            name, eq, value = arg.partition("=")
            if name not in OPTIONS or name in given:
                raise _Fallback  # --wait, --help, --, an unknown or repeated option
            if not eq:
                if i + 1 >= len(argv):
                    raise _Fallback
                i += 1
                value = argv[i]
            if not value:
                raise _Fallback
            given[name] = value
        else:
            files.append(arg)
        i += 1
    if len(files) != 1 or not files[0]:
        raise _Fallback
    return Path(files[0]), given


def _text(value: Any) -> bool:
    """A string pydantic's `Text` takes as it is: no NUL, valid Unicode."""
    if not isinstance(value, str) or "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _int(value: Any, lo: int, hi: int) -> bool:
    return type(value) is int and lo <= value <= hi


def _seconds(value: Any) -> bool:
    return value is None or (type(value) in (int, float) and 0 < value < float("inf"))


def _resources(value: Any) -> bool:
    """A resources mapping that corral.control.spec.Resources accepts as it is (its consistency rules)."""
    if not isinstance(value, dict) or not set(value) <= {"gpus", "min_gpus", "max_gpus"}:
        return False
    if not all(v is None or _int(v, 1, 4096) for v in value.values()):
        return False
    gpus, lo, hi = value.get("gpus"), value.get("min_gpus"), value.get("max_gpus")
    hi = hi if hi is not None else max(gpus or 1, lo or 1)
    lo = lo if lo is not None else min(gpus or 1, hi) if gpus else 1
    gpus = gpus if gpus is not None else hi
    return bool(lo <= gpus <= hi)


def _dependencies(value: Any) -> bool:
    from corral.control.arrays import MAX_DEPENDENCIES

    return type(value) is list and len(value) <= MAX_DEPENDENCIES and all(_int(v, 1, 2**62) for v in value)


def _range(value: Any) -> bool:
    """An array range ("0-9", "1,3,8", "0-99:10") the job spec takes."""
    from corral.control.arrays import parse_range

    if not _text(value):
        return False
    try:
        parse_range(value)
    except Exception:
        return False
    return True


def _plain(spec: Any) -> list[str] | None:
    """The entrypoint's argv when `spec` holds only fields the job spec certainly accepts as they are, else None."""
    import shlex

    if not isinstance(spec, dict) or not all(isinstance(k, str) for k in spec):
        return None
    fields = set(spec)
    if not fields <= {"name", "entrypoint", "run", "workdir", "env", "resources", "priority", "max_restarts",
                      "timeout", "duration_estimate", "preemptible", "depends_on", "after", "array"}:  # fmt: skip
        return None
    if not (_dependencies(spec.get("depends_on", [])) and spec.get("after", "ok") in ("ok", "any")):
        return None
    if "array" in spec and not _range(spec["array"]):  # an array of values goes the full command's way
        return None
    if "run" in fields and "entrypoint" in fields:
        return None
    name, entrypoint = spec.get("name"), spec.get("entrypoint", spec.get("run"))
    if not (isinstance(name, str) and len(name) <= 128 and NAME.fullmatch(name)):
        return None
    if not (_text(entrypoint) and entrypoint):
        return None
    env = spec.get("env", {})
    ok = (
        (spec.get("workdir") is None or _text(spec["workdir"]))
        and isinstance(env, dict)
        and all(_text(k) and k and "=" not in k and _text(v) for k, v in env.items())
        and ("resources" not in spec or _resources(spec["resources"]))
        and _int(spec.get("priority", 0), -1000, 1000)
        and _int(spec.get("max_restarts", 0), 0, 100)
        and _seconds(spec.get("timeout"))
        and _seconds(spec.get("duration_estimate"))
        and isinstance(spec.get("preemptible", True), bool)
    )
    if not ok:
        return None
    try:
        argv = shlex.split(entrypoint)
    except ValueError:
        return None
    return argv or None


def _load(job_file: Path) -> Any:
    """The job file's mapping; _Fallback when it cannot be read or parsed (the full command says why)."""
    try:
        text = job_file.read_bytes().decode("utf-8-sig")
        if job_file.suffix == ".json":
            return json.loads(text)
        import yaml

        return yaml.safe_load(text)
    except Exception:  # unreadable, not UTF-8, not YAML/JSON, nested too deeply: its message is the full command's
        raise _Fallback from None


def _submit(argv: list[str]) -> int:
    job_file, given = _options(argv)
    spec = _load(job_file)
    args = _plain(spec)
    if args is None:
        raise _Fallback
    workdir = resolve_workdir(spec.get("workdir"), job_file)
    check_script(args, workdir, job_file)
    body = {("entrypoint" if k == "run" else k): v for k, v in spec.items()}
    body["workdir"] = workdir
    server = endpoint.resolve_server(given.get("--server"), check=_check_url)
    token = endpoint.resolve_token(given.get("--token"))
    ca_cert = endpoint.resolve_ca_cert(Path(given["--ca-cert"]) if "--ca-cert" in given else None)
    status, content = _post(server, token, ca_cert, "/jobs", json.dumps(body).encode())
    if status == 422 or not (200 <= status < 300 or status >= 400):
        raise _Fallback  # a spec the server finds invalid: the full command names the field as it always did
    if status >= 400:
        raise UserError(endpoint.error_detail(status, content, server))
    try:
        job = dict(json.loads(content))
    except (ValueError, TypeError):
        raise UserError(
            f"the server at {server} answered /jobs with something that is not JSON; is it a corral server?"
        ) from None
    if job.get("array_size"):
        n = job["array_size"]
        print(f"submitted array {job['id']}: jobs {job['id']}..{job['id'] + n - 1} ({job['name']}, {n} jobs)")
    else:
        print(f"submitted job {job['id']} ({job['name']})", flush=True)
    return 0


def _check_url(url: str, source: str) -> None:
    """The shared URL rules; a URL http.client might read differently from httpx goes to the full command."""
    from urllib.parse import urlsplit

    endpoint.check_server_url(url, source)
    parts = urlsplit(url)
    if not url.isascii() or parts.query or parts.fragment or "@" in parts.netloc:
        raise _Fallback


def _post(server: str, token: str, ca_cert: str | None, path: str, body: bytes) -> tuple[int, bytes]:
    """POST `body` (JSON) to the API; (status, content). A connection that cannot be made goes to the full
    command (nothing was sent); one lost after the request went out is the client's one line."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(server)
    host = parts.hostname or ""
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(
            host, parts.port, timeout=endpoint.TIMEOUT, context=endpoint.tls_context(ca_cert)
        )
    else:
        conn = http.client.HTTPConnection(host, parts.port, timeout=endpoint.TIMEOUT)
    try:
        try:
            conn.connect()
        except (OSError, http.client.HTTPException):
            raise _Fallback from None  # refused, no such host, TLS: the full command's message, nothing queued
        try:
            conn.request(
                "POST",
                parts.path + endpoint.API + path,
                body,
                {"Authorization": f"Bearer {token}", "Content-Type": "application/json", "Accept": "*/*"},
            )
            resp = conn.getresponse()
            return resp.status, resp.read()
        except (OSError, http.client.HTTPException) as exc:
            raise endpoint.unreachable_error(server, exc) from None
    finally:
        conn.close()
