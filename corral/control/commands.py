"""CLI commands of the service: server, token, submit, jobs, describe, logs, cancel, cluster, demo.

Registered on the main app by corral.cli. Importing this module stays cheap:
httpx, rich, the server (FastAPI, uvicorn) and the service are imported
inside the commands, so `corral --help` stays fast.
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from corral.control.states import ACTIVE, STATE_STYLE, STATES, TERMINAL, JobState
from corral.errors import UserError

if TYPE_CHECKING:
    from rich.console import Console

    from corral.control.client import Client

MAX_ID = 2**62 - 1
MAX_DEVICES = 4096
MAX_RANK = 4096
MAX_LIMIT = 10_000
RECENT = 3600.0  # seconds: `corral jobs` shows jobs that ended this recently
POLL = 1.0  # seconds between polls of `submit --wait`
JOB_COLOURS = (
    "blue",
    "green",
    "magenta",
    "cyan",
    "yellow",
    "red",
    "bright_blue",
    "bright_green",
    "bright_magenta",
    "bright_cyan",
    "dark_orange",
    "purple",
    "spring_green3",
    "deep_pink3",
)

ServerOpt = Annotated[
    str | None,
    typer.Option(
        "--server",
        help="URL of the corral server (default: CORRAL_SERVER, else http://127.0.0.1:8765).",
        show_default=False,
    ),
]
TokenOpt = Annotated[
    str | None,
    typer.Option(
        "--token", help="API token (default: CORRAL_TOKEN, else the file $CORRAL_HOME/token).", show_default=False
    ),
]
CaCertOpt = Annotated[
    Path | None,
    typer.Option(
        "--ca-cert",
        help="PEM file of the CA that signed an https server's certificate (default: CORRAL_CA_CERT, else the "
        "system's CAs).",
        metavar="FILE",
        show_default=False,
    ),
]
JobIdArg = Annotated[str, typer.Argument(help="Job id (as `corral jobs` shows it).", metavar="ID", show_default=False)]
# ID arguments take "-3" as a value (then refused with a clear line) instead of an unknown option.
ID_COMMAND = {"ignore_unknown_options": True}


# -- helpers -------------------------------------------------------------------------


def _int_in(option: str, value: int, lo: int, hi: int) -> int:
    if not lo <= value <= hi:
        raise UserError(f"{option} must be between {lo} and {hi}, got {value}")
    return value


def _seconds(option: str, value: float, *, positive: bool) -> float:
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise UserError(f"{option} must be a number of seconds {'> 0' if positive else '>= 0'}, got {value}")
    return value


def _job_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_ID:
        raise UserError(f"job id must be a positive integer, got {text!r}")
    return value


def _client(server: str | None, token: str | None, ca_cert: Path | None = None) -> Client:
    from corral.control.client import Client

    return Client.from_options(server, token, ca_cert)


DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_EXPIRES_S = 10 * 365 * 86400  # ten years


def _expires(text: str) -> float:
    """Seconds in a duration: 3600, 90s, 30m, 12h, 7d (> 0, at most ten years); UserError naming --expires."""
    import re

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text.lower())
    value = float(m[1]) * DURATION_UNITS[m[2]] if m else 0.0
    if not m or not 0 < value <= MAX_EXPIRES_S:
        raise UserError(
            f"--expires must be a duration > 0 and at most 3650d, such as 3600, 30m, 12h or 7d; got {text!r}"
        )
    return value


def _console() -> Console:
    from rich.console import Console

    # Piped output keeps whole rows (rich would wrap to 80 columns).
    if not sys.stdout.isatty() and "COLUMNS" not in os.environ:
        return Console(width=200, highlight=False)
    return Console(highlight=False)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 2 * 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _clock(t: float | None) -> str:
    if t is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _state(job: dict[str, Any]) -> str:
    return f"[{STATE_STYLE.get(job['state'], '')}]{job['state']}[/]"


def _wanted(job: dict[str, Any]) -> str:
    return str(job["gpus"]) if job["min_gpus"] == job["max_gpus"] else f"{job['min_gpus']}-{job['max_gpus']}"


def _devices(job: dict[str, Any]) -> str:
    """Held/wanted for a live job; what it asked for once it ended."""
    if job["state"] in TERMINAL:
        return _wanted(job)
    return f"{len(job['devices'])}/{_wanted(job)}"


def _progress(job: dict[str, Any]) -> str:
    if job.get("progress") is not None:
        return f"step {job['step']} ({100 * job['progress']:.0f}%)"
    return f"step {job['step']}" if job["step"] else "-"


def _esc(text: Any) -> str:
    from rich.markup import escape

    return escape(str(text))


# -- server and users ------------------------------------------------------------------


def server_command(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8765,
    db: Annotated[
        str | None,
        typer.Option(
            help="SQLAlchemy database URL (default: CORRAL_DB, else SQLite at HOME/corral.db).", show_default=False
        ),
    ] = None,
    devices: Annotated[
        int | None,
        typer.Option(
            help="Device slots to hand out (default: the CUDA devices, else one per two CPU cores).", show_default=False
        ),
    ] = None,
    policy: Annotated[
        str, typer.Option(help="Scheduling policy: fifo, fifo-backfill, priority, srtf, tiresias, themis, pollux.")
    ] = "priority",
    placer: Annotated[str, typer.Option(help="Placement: pack, spread or random.")] = "pack",
    round_s: Annotated[
        float, typer.Option("--round", help="Seconds between periodic scheduling rounds.", metavar="SECONDS")
    ] = 5.0,
    grace: Annotated[
        float, typer.Option(help="Seconds a stopped job gets to checkpoint before it is killed.", metavar="SECONDS")
    ] = 10.0,
    home: Annotated[
        Path | None,
        typer.Option(
            help="Where state, logs and tokens live (default: CORRAL_HOME, else ~/.corral).", show_default=False
        ),
    ] = None,
    executor: Annotated[
        str, typer.Option(help="Where jobs run: local (process gangs on this machine) or ray (a Ray cluster).")
    ] = "local",
    ray_address: Annotated[
        str, typer.Option(help="--executor ray: the cluster, auto or HOST:PORT of its head.", metavar="ADDRESS")
    ] = "auto",
    checkpoint_root: Annotated[
        Path | None,
        typer.Option(
            help="--executor ray: where job checkpoints go, a shared path every node reaches (default: HOME/jobs).",
            show_default=False,
        ),
    ] = None,
    placement_timeout: Annotated[
        float,
        typer.Option(
            help="--executor ray: seconds a gang may wait to be placed before it goes back to PENDING.",
            metavar="SECONDS",
        ),
    ] = 30.0,
    tls_cert: Annotated[
        Path | None,
        typer.Option(
            help="Serve HTTPS with this PEM certificate (with --tls-key).", metavar="FILE", show_default=False
        ),
    ] = None,
    tls_key: Annotated[
        Path | None,
        typer.Option(help="The private key of --tls-cert (PEM).", metavar="FILE", show_default=False),
    ] = None,
    ca_cert: Annotated[
        Path | None,
        typer.Option(
            help="With --tls-cert: the CA file jobs verify this server with (their CORRAL_CA_CERT); for a "
            "self-signed certificate, the --tls-cert file itself (default: the system's CAs).",
            metavar="FILE",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run the corral service: HTTP API, dashboard and scheduler loop, in the foreground."""
    import logging

    from corral.control.client import client_home
    from corral.sched import policies

    # Everything a user can get wrong is checked before anything starts.
    _int_in("--port", port, 1, 65535)
    if devices is not None:
        _int_in("--devices", devices, 1, MAX_DEVICES)
    _seconds("--round", round_s, positive=True)
    _seconds("--grace", grace, positive=False)
    policies.get(policy, placer=placer)
    from corral.control import executors

    if executor not in executors.available():
        raise UserError(f"--executor: unknown executor {executor!r}; choose one of: {', '.join(executors.available())}")
    _seconds("--placement-timeout", placement_timeout, positive=True)
    if executor != "ray" and (ray_address != "auto" or checkpoint_root is not None):
        raise UserError("--ray-address and --checkpoint-root go with --executor ray")
    if checkpoint_root is not None and checkpoint_root.exists() and not checkpoint_root.is_dir():
        raise UserError(f"--checkpoint-root: {checkpoint_root} exists and is not a folder")

    from corral.control.client import tls_context
    from corral.control.server import check_port, check_tls, serve
    from corral.control.service import Service, ServiceConfig

    check_tls(tls_cert, tls_key)
    if ca_cert is not None:
        if tls_cert is None:
            raise UserError("--ca-cert goes with --tls-cert: jobs need a CA only to verify an HTTPS server")
        tls_context(str(ca_cert), "--ca-cert")
    check_port(host, port)
    home_dir = _home_dir(home or client_home())
    had_token = (home_dir / "token").exists()
    service = Service(
        ServiceConfig(
            home=home_dir,
            db=db,
            devices=devices,
            policy=policy,
            placer=placer,
            round_seconds=round_s,
            grace=grace,
            executor=executor,
            ray_address=ray_address,
            checkpoint_root=checkpoint_root.expanduser().resolve() if checkpoint_root else None,
            placement_timeout=placement_timeout,
            ca_cert=ca_cert.expanduser().resolve() if ca_cert else None,
        )
    )
    written = service.ensure_admin()
    if written is not None:
        also = "" if had_token else f" (also {home_dir / 'token'})"
        print(f"admin token written to {written}{also}", flush=True)
    shown = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    url = f"{'https' if tls_cert else 'http'}://{shown}:{port}"
    print(
        f"corral server: {service.total_devices()} devices ({executor} executor), policy {policy}, home {home_dir}",
        flush=True,
    )
    print(f"dashboard: {url}/   API docs: {url}/docs", flush=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve(service, host, port, tls_cert=tls_cert, tls_key=tls_key)


def _home_dir(home: Path) -> Path:
    """The server's home as an absolute path: a folder, or one that can be made (it is made later, by the
    service); UserError when it or a parent is a file, or it cannot be written."""
    try:
        path = home.expanduser().resolve()
    except (RuntimeError, OSError) as exc:  # ~user of no known user, a symlink loop
        raise UserError(f"--home {home}: not a usable folder ({exc})") from None
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        what = "it" if existing == path else str(existing)
        raise UserError(f"--home {home}: {what} exists and is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"--home {home}: {existing} is not writable")
    return path


def token_create(
    user: Annotated[str, typer.Argument(help="Name of the user to create (or give a new token).", show_default=False)],
    admin: Annotated[bool, typer.Option("--admin", help="Make the user an admin.")] = False,
    expires: Annotated[
        str | None,
        typer.Option(
            help="The token stops working after this long: seconds, or 30m, 12h, 7d (default: never).",
            metavar="DURATION",
            show_default=False,
        ),
    ] = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca_cert: CaCertOpt = None,
) -> None:
    """Create a user's API token (admins only); prints it once."""
    from corral.control.client import client_home

    expires_in = None if expires is None else _expires(expires)
    with _client(server, token, ca_cert) as client:
        out = client.create_user(user, admin, expires_in)
    kind = "admin" if out["admin"] else "user"
    until = f", expires {_clock(out['expires'])}" if out.get("expires") else ""
    print(f"token for {kind} {out['name']} (shown once; keep it secret{until}):")
    print(out["token"])
    print(f"use it: export CORRAL_TOKEN={out['token']}  (or pass --token, or save it in {client_home() / 'token'})")


def token_revoke(
    user: Annotated[str, typer.Argument(help="Name of the user whose token ends now.", show_default=False)],
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca_cert: CaCertOpt = None,
) -> None:
    """End a user's API token at once (admins, or the user themself); an admin makes a new one with `token create`."""
    import re

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", user):
        raise UserError(f"name: {user!r} is not a user name (letters, digits, '.', '_', '-'; at most 64)")
    with _client(server, token, ca_cert) as client:
        client.revoke_token(user)
    print(f"token of {user} revoked: it no longer works (`corral token create {user}` makes a new one)")


# -- jobs ----------------------------------------------------------------------------


def _resolve_workdir(spec: Any, job_file: Path) -> str:
    """The spec's workdir made absolute: relative to the job file's folder; none means the current folder."""
    from corral.control.submit_fast import resolve_workdir  # one rule for the fast path and this command

    return resolve_workdir(spec.workdir, job_file)


def _check_script(spec: Any, workdir: str, job_file: Path) -> None:
    """Refuse `python missing.py` before queueing a job that could only fail."""
    from corral.control.submit_fast import check_script

    check_script(spec.argv(), workdir, job_file)


def submit_command(
    job_file: Annotated[Path, typer.Argument(help="Job spec (YAML or JSON).", metavar="JOB.yaml", show_default=False)],
    wait: Annotated[
        bool, typer.Option("--wait", help="Follow the job until it ends; exit 0 only if it succeeded.")
    ] = False,
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca_cert: CaCertOpt = None,
) -> None:
    """Queue a job from a spec file."""
    from corral.control.spec import load_spec

    spec = load_spec(job_file)
    workdir = _resolve_workdir(spec, job_file)
    _check_script(spec, workdir, job_file)
    body = spec.model_dump(mode="json", by_alias=False)
    body["workdir"] = workdir
    with _client(server, token, ca_cert) as client:
        job = client.submit(body)
        if job.get("array_size"):
            n = job["array_size"]
            print(f"submitted array {job['id']}: jobs {job['id']}..{job['id'] + n - 1} ({job['name']}, {n} jobs)")
        else:
            print(f"submitted job {job['id']} ({job['name']})", flush=True)
        if wait:
            raise typer.Exit(_wait(client, job))


def _wait(client: Client, job: dict[str, Any]) -> int:
    """Follow a job until it ends; 0 if it succeeded, else 1."""
    console = _console()
    seen = ""
    try:
        with console.status("") as status:
            while True:
                if job["state"] != seen:
                    seen = job["state"]
                    reason = f" ({_esc(job['reason'])})" if job["reason"] else ""
                    console.print(f"job {job['id']}: {_state(job)}{reason}")
                if job["state"] in TERMINAL:
                    break
                last = f" | {_esc(job['last_log'][-80:])}" if job.get("last_log") else ""
                status.update(
                    f"job {job['id']} {_state(job)} {_esc(job['reason'])} "
                    f"{_progress(job)} {_duration(job['run_time'])} running{last}"
                )
                time.sleep(POLL)
                job = client.job(job["id"])
    except KeyboardInterrupt:
        console.print(f"stopped waiting; job {job['id']} goes on (see `corral describe {job['id']}`)")
        raise
    took = _duration(job["run_time"])
    code = f", exit code {job['exit_code']}" if job.get("exit_code") not in (None, 0) else ""
    console.print(f"job {job['id']} ({_esc(job['name'])}) {_state(job)} after {took} of running{code}")
    return 0 if job["state"] == JobState.SUCCEEDED.value else 1


def jobs_command(
    state: Annotated[
        list[str] | None,
        typer.Option(
            "--state", "-s", help="Show jobs in this state (repeatable): " + ", ".join(STATES) + ".", show_default=False
        ),
    ] = None,
    user: Annotated[str | None, typer.Option(help="Only this user's jobs.", show_default=False)] = None,
    all_: Annotated[bool, typer.Option("--all", "-a", help="Every job, also those that ended long ago.")] = False,
    limit: Annotated[
        int | None,
        typer.Option(help=f"At most N jobs (1..{MAX_LIMIT}), newest first.", metavar="N", show_default=False),
    ] = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca_cert: CaCertOpt = None,
) -> None:
    """List jobs: those waiting or running and those that ended in the last hour (--all: every job)."""
    states = [s.strip().upper() for s in state or []]
    for s in states:
        if s not in STATES:
            raise UserError(f"unknown state {s!r}; choose from: {', '.join(STATES)}")
    if limit is not None:
        _int_in("--limit", limit, 1, MAX_LIMIT)
    with _client(server, token, ca_cert) as client:
        if states or all_:
            jobs = client.jobs(states or None, user, limit)
        else:
            # Two queries, so an old waiting job is not crowded out by many recent finished ones.
            cutoff = time.time() - RECENT
            ended = [j for j in client.jobs(TERMINAL, user, limit) if (j["end_time"] or 0) >= cutoff]
            jobs = sorted(client.jobs(ACTIVE, user, limit) + ended, key=lambda j: -j["id"])[:limit]
    console = _console()
    if not jobs:
        hint = "" if states or all_ else " running, waiting or ended in the last hour (--all shows every job)"
        console.print(f"no jobs{hint}")
        return
    from rich.table import Table

    now = time.time()
    table = Table(box=None, header_style="bold")
    for col in ("ID", "NAME", "USER", "STATE", "REASON", "DEVICES", "PRIORITY", "AGE", "PROGRESS"):
        table.add_column(col, justify="right" if col in ("ID", "PRIORITY", "DEVICES") else "left")
    for j in jobs:
        table.add_row(
            str(j["id"]),
            _esc(j["name"]) + (f"[{j['array_index']}]" if j.get("array_index") is not None else ""),
            _esc(j["user"]),
            _state(j),
            _esc(j["reason"] or "-"),
            _devices(j),
            str(j["priority"]),
            _duration(now - j["submit_time"]),
            _progress(j),
        )
    console.print(table)


def describe_command(
    job_id: JobIdArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print the job, its events and metrics as JSON.")] = False,
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca_cert: CaCertOpt = None,
) -> None:
    """Show one job: spec, allocation, counters, event timeline and latest metrics."""
    jid = _job_id(job_id)
    with _client(server, token, ca_cert) as client:
        job = client.job(jid)
        events = client.events(jid)
        metrics = client.metrics(jid)
    if as_json:
        import json

        print(json.dumps({**job, "events": events, "metrics": metrics}, indent=2))
        return
    _print_job(job, events, metrics)


def _print_job(job: dict[str, Any], events: list[dict[str, Any]], metrics: list[dict[str, Any]]) -> None:
    import yaml
    from rich.table import Table

    console = _console()
    reason = f"  ({_esc(job['reason'])})" if job["reason"] else ""
    console.print(f"[bold]job {job['id']}[/] {_esc(job['name'])}  user {_esc(job['user'])}  {_state(job)}{reason}")
    spec = {k: v for k, v in job["spec"].items() if v not in (None, {}, [])}
    console.print("[bold]spec[/]")
    console.print(_esc(yaml.safe_dump(spec, sort_keys=False).rstrip()), soft_wrap=True)
    console.print(
        f"[bold]allocation[/] {', '.join(job['devices']) or 'none'}  (wants {_wanted(job)}, priority {job['priority']})"
    )
    counters = Table(box=None, show_header=False, title="counters", title_justify="left", title_style="bold")
    counters.add_column(style="dim")
    counters.add_column()
    for name, value in (
        ("submitted", _clock(job["submit_time"])),
        ("started", _clock(job["start_time"])),
        ("ended", _clock(job["end_time"])),
        ("queue time", _duration(job["queue_time"])),
        ("run time", _duration(job["run_time"])),
        ("device time", f"{job['attained_service']:.0f} device-seconds"),
        ("attempt", str(job["attempt"])),
        ("restarts", str(job["restarts"])),
        ("preemptions", str(job["preemptions"])),
        ("resizes", str(job["resizes"])),
        ("exit code", "-" if job["exit_code"] is None else str(job["exit_code"])),
        ("progress", _progress(job)),
        ("scheduler model", _esc(job.get("model", ""))),
    ):
        counters.add_row(name, value)
    console.print(counters)
    timeline = Table(box=None, title="events", title_justify="left", title_style="bold", header_style="dim")
    for col in ("TIME", "TRANSITION", "CAUSE"):
        timeline.add_column(col)
    for e in events:
        timeline.add_row(_clock(e["time"]), f"{e['src'] or '-'} -> {e['dst']}", _esc(e["cause"]))
    console.print(timeline if events else "[bold]events[/] none")
    if metrics:
        last = metrics[-1]
        values = "  ".join(f"{k}={v:.4g}" for k, v in sorted(last["values"].items()))
        console.print(
            f"[bold]metrics[/] step {last['step']} at {_clock(last['time'])}: {_esc(values)}  ({len(metrics)} reports)"
        )
    else:
        console.print("[bold]metrics[/] none reported")
    if job.get("last_log"):
        console.print(f"[bold]last log[/] {_esc(job['last_log'])}", soft_wrap=True)


def logs_command(
    job_id: JobIdArg,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing output until the job ends.")] = False,
    rank: Annotated[
        int | None,
        typer.Option(help="Only this rank's output (default: every rank, prefixed).", metavar="R", show_default=False),
    ] = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca_cert: CaCertOpt = None,
) -> None:
    """Print a job's output (owner or admin)."""
    jid = _job_id(job_id)
    if rank is not None:
        _int_in("--rank", rank, 0, MAX_RANK)
    with _client(server, token, ca_cert) as client:
        chunks = client.follow_logs(jid, rank) if follow else client.all_logs(jid, rank)
        wrote = False
        try:
            for text in chunks:
                sys.stdout.write(text)
                sys.stdout.flush()
                wrote = wrote or bool(text)
        except BrokenPipeError:  # `corral logs 3 | head`: the reader had enough
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return
        if not wrote:
            job = client.job(jid)
            which = f"rank {rank} of job {jid}" if rank is not None else f"job {jid}"
            print(f"{which} has written no output ({job['state']})", file=sys.stderr)


def cancel_command(
    job_ids: Annotated[
        list[str] | None, typer.Argument(help="Job ids (one or many).", metavar="[ID]...", show_default=False)
    ] = None,
    user: Annotated[str | None, typer.Option(help="Every job of this user.", show_default=False)] = None,
    state: Annotated[
        list[str] | None,
        typer.Option("--state", "-s", help="Only jobs in this state (repeatable).", show_default=False),
    ] = None,
    name: Annotated[str | None, typer.Option(help="Only jobs with this name.", show_default=False)] = None,
    array: Annotated[
        str | None, typer.Option(help="Every job of this array (its first job's id).", show_default=False)
    ] = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca_cert: CaCertOpt = None,
) -> None:
    """Cancel jobs (owner or admin): waiting ones at once, running ones once their ranks stop.

    One id cancels that job; many ids, or --user/--state/--name/--array (all given must match),
    cancel every job they select in one request, like scancel."""
    ids = [_job_id(j) for j in job_ids or []]
    states = [s.strip().upper() for s in state or []]
    for st in states:
        if st not in ACTIVE:
            raise UserError(f"--state: {st!r} cannot be cancelled; choose from: {', '.join(ACTIVE)}")
    if not ids and not (user or states or name or array):
        raise UserError("give job ids, or --user, --state, --name or --array")
    if len(ids) != 1 or user or states or name or array:
        with _client(server, token, ca_cert) as client:
            done = client.cancel_many(
                ids=ids, user=user, state=states, name=name, array=_job_id(array) if array else None
            )
        plural = "s" if len(done) != 1 else ""
        _console().print(f"cancelled {len(done)} job{plural}" + (f": {_id_ranges(done)}" if done else ""))
        return
    jid = ids[0]
    with _client(server, token, ca_cert) as client:
        job = client.cancel(jid)
    console = _console()
    if job["state"] == JobState.CANCELLED.value:
        console.print(f"job {jid} ({_esc(job['name'])}): {_state(job)}")
    else:
        console.print(
            f"job {jid} ({_esc(job['name'])}): {_state(job)}, cancelling; it becomes CANCELLED once its ranks stop"
        )


def _id_ranges(ids: list[int]) -> str:
    """1,2,3,7 -> '1-3, 7'."""
    out: list[str] = []
    for i in sorted(ids):
        if out and out[-1].split("-")[-1] == str(i - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{i}"
        else:
            out.append(str(i))
    return ", ".join(out)


def cluster_command(
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca_cert: CaCertOpt = None,
) -> None:
    """Show every device and the job on it."""
    from rich.table import Table
    from rich.text import Text

    with _client(server, token, ca_cert) as client:
        info = client.cluster()
    console = _console()
    jobs: dict[int, dict[str, Any]] = {}
    nodes: dict[str, list[dict[str, Any]]] = {}
    for d in info["devices"]:
        nodes.setdefault(d["node"], []).append(d)
        if d["job_id"] is not None:
            jobs.setdefault(d["job_id"], {"name": d["job_name"], "user": d["user"], "devices": 0})["devices"] += 1
    colour = {jid: JOB_COLOURS[i % len(JOB_COLOURS)] for i, jid in enumerate(sorted(jobs))}
    width = max([len(str(j)) for j in jobs] + [len(str(len(info["devices"]) - 1)), 2]) + 2
    per_line = max(4, (console.width - 16) // (width + 1))
    grid = Table(box=None, show_header=False, pad_edge=False)
    grid.add_column(style="bold")
    grid.add_column()
    for node, devs in nodes.items():
        for start in range(0, len(devs), per_line):
            row = Text()
            for d in devs[start : start + per_line]:
                if d["job_id"] is None:
                    row.append(f"{'free':^{width}}" if width >= 4 else f"{'.':^{width}}", style="dim")
                else:
                    row.append(f"{d['job_id']:^{width}}", style=f"bold white on {colour[d['job_id']]}")
                row.append(" ")
            label = f"{node} {start}-{start + len(devs[start : start + per_line]) - 1}"
            grid.add_row(label, row)
    console.print(grid)
    if jobs:
        legend = Table(box=None, header_style="dim")
        for col in ("JOB", "NAME", "USER", "DEVICES"):
            legend.add_column(col)
        for jid in sorted(jobs):
            j = jobs[jid]
            legend.add_row(
                Text(f" {jid} ", style=f"bold white on {colour[jid]}"),
                _esc(j["name"]),
                _esc(j["user"]),
                str(j["devices"]),
            )
        console.print(legend)
    console.print(
        f"{info['used']}/{info['total']} devices in use, {info['running']} jobs running, "
        f"{info['pending']} pending; policy {info['policy']}"
    )


def demo_command(
    devices: Annotated[int, typer.Option(help="Device slots of the demo cluster.")] = 4,
    report_dir: Annotated[Path | None, typer.Option(help="Write the demo report here.", show_default=False)] = None,
    port: Annotated[int, typer.Option(help="Port of the demo server (0: a free one).")] = 0,
    quick: Annotated[bool, typer.Option("--quick", help="A shorter demo.")] = False,
) -> None:
    """Run a live demo: a server, several jobs contending for devices, and a report."""
    _int_in("--devices", devices, 1, MAX_DEVICES)
    _int_in("--port", port, 0, 65535)
    try:
        from corral.control.demo import run_demo
    except ModuleNotFoundError as exc:
        if exc.name != "corral.control.demo":
            raise
        raise UserError("`corral demo` is not available in this installation") from None
    raise typer.Exit(run_demo(devices=devices, report_dir=report_dir, port=port, quick=quick))


def register(app: typer.Typer) -> None:
    """Add the service's commands to `app` (once: corral.cli.main may run many times in one process)."""
    if any(c.name == "server" for c in app.registered_commands):
        return
    app.command("server")(server_command)
    token_app = typer.Typer(help="Manage API tokens.", no_args_is_help=True)
    token_app.command("create")(token_create)
    token_app.command("revoke")(token_revoke)
    app.add_typer(token_app, name="token")
    app.command("submit")(submit_command)
    app.command("jobs")(jobs_command)
    app.command("describe", context_settings=ID_COMMAND)(describe_command)
    app.command("logs", context_settings=ID_COMMAND)(logs_command)
    app.command("cancel", context_settings=ID_COMMAND)(cancel_command)
    app.command("cluster")(cluster_command)
    app.command("demo")(demo_command)
