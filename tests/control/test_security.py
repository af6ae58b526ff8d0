"""Authentication that holds: tokens that expire and can be revoked (at once, despite the token cache), HTTPS
with a CA the CLI and the jobs verify, and a service home that other local users cannot read."""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from corral.control.server import free_port
from corral.control.service import Service, ServiceConfig
from tests.conftest import ROOT, corral_cmd
from tests.control import test_cli as shared
from tests.control.conftest import LiveServer
from tests.control.test_cli import Result, refused

API = "/api/v1"


cli = shared.cli  # the CLI in this process (a fixture); it clears CORRAL_CA_CERT too


@pytest.fixture
def server(make_server: Callable[..., LiveServer], db_url: str) -> LiveServer:
    """A live server on SQLite, then on PostgreSQL."""
    return make_server(db=db_url)


def detail(resp: httpx.Response) -> str:
    text = resp.json()["detail"]
    assert isinstance(text, str) and "\n" not in text, resp.text
    return text


# -- tokens that expire and can be revoked ---------------------------------------------------------


def test_an_expired_token_is_refused_at_once_despite_the_cache(server: LiveServer) -> None:
    admin = server.client()
    before = time.time()
    out = admin.post(f"{API}/users", json={"name": "alice", "expires_in": 1.5}).json()
    assert before + 1.5 <= out["expires"] <= time.time() + 1.5
    alice = server.client(out["token"])
    assert alice.get(f"{API}/whoami").status_code == 200  # cached now, for 5 s
    job = alice.post(f"{API}/jobs", json={"name": "j", "entrypoint": "python -c pass", "workdir": str(ROOT)})
    assert job.status_code == 201, job.text
    time.sleep(max(0.0, out["expires"] - time.time()) + 0.1)
    for resp in (
        alice.get(f"{API}/whoami"),
        alice.post(f"{API}/jobs/{job.json()['id']}/metrics", json={"records": [{"step": 1, "values": {"x": 1}}]}),
    ):
        assert resp.status_code == 401 and detail(resp).startswith("token expired"), resp.text
    # A new token (no expiry) works again; the answer says it never expires.
    again = admin.post(f"{API}/users", json={"name": "alice"}).json()
    assert again["expires"] is None
    assert server.client(again["token"]).get(f"{API}/whoami").status_code == 200


def test_revoking_or_rekeying_ends_a_cached_token_at_once(server: LiveServer) -> None:
    admin = server.client()
    alice = server.client(server.user("alice"))
    bob_token = server.user("bob")
    bob = server.client(bob_token)
    assert alice.get(f"{API}/whoami").status_code == 200 and bob.get(f"{API}/whoami").status_code == 200
    resp = admin.post(f"{API}/users/alice/revoke")
    assert resp.status_code == 200 and resp.json() == {"name": "alice", "revoked": True}, resp.text
    resp = alice.get(f"{API}/whoami")
    assert resp.status_code == 401 and detail(resp) == "invalid token"
    # A user may revoke their own token (and nobody else's).
    assert bob.post(f"{API}/users/admin/revoke").status_code == 403
    assert bob.post(f"{API}/users/bob/revoke").status_code == 200
    assert server.client(bob_token).get(f"{API}/whoami").status_code == 401
    # A re-key through the API ends the old token at once too, though it was cached a moment ago.
    carol = admin.post(f"{API}/users", json={"name": "carol"}).json()["token"]
    assert server.client(carol).get(f"{API}/whoami").status_code == 200
    assert admin.post(f"{API}/users", json={"name": "carol"}).status_code == 201
    assert server.client(carol).get(f"{API}/whoami").status_code == 401


def test_revoke_refuses_unknown_users_and_the_last_admin(server: LiveServer) -> None:
    admin = server.client()
    resp = admin.post(f"{API}/users/nobody/revoke")
    assert resp.status_code == 404 and detail(resp) == "name: no user 'nobody'"
    resp = admin.post(f"{API}/users/admin/revoke")
    assert resp.status_code == 409 and "only admin" in detail(resp)
    assert admin.get(f"{API}/whoami").status_code == 200
    # With a second admin, the first may revoke their own token.
    other = admin.post(f"{API}/users", json={"name": "root2", "admin": True}).json()["token"]
    assert admin.post(f"{API}/users/admin/revoke").status_code == 200
    assert admin.get(f"{API}/whoami").status_code == 401
    assert server.client(other).get(f"{API}/whoami").json() == {"name": "root2", "admin": True}


@pytest.mark.parametrize("bad", [0, -5, "soon", 1e30, None, True])
def test_bad_expiries_are_one_line_naming_the_field(server: LiveServer, bad: object) -> None:
    body = {"name": "alice", "expires_in": bad}
    if bad is None:
        body = {"name": "alice", "expires_in": {}}
    resp = server.client().post(f"{API}/users", json=body)
    assert resp.status_code == 422 and detail(resp).startswith("expires_in"), resp.text
    assert server.service.store.get_user("alice") is None


def test_token_create_expires_and_token_revoke(cli: Callable[..., Result], server: LiveServer) -> None:
    env = {"CORRAL_SERVER": server.url, "CORRAL_TOKEN": server.token}
    r = cli("token", "create", "alice", "--expires", "30m", env=env)
    assert r.code == 0 and "expires " in r.out, r.err
    alice = server.service.store.get_user("alice")
    assert alice is not None and alice.token_expires is not None
    assert abs(alice.token_expires - (time.time() + 1800)) < 60
    for good, seconds in (("3600", 3600), ("12h", 12 * 3600), ("7d", 7 * 86400), ("90s", 90)):
        assert cli("token", "create", "bob", "--expires", good, env=env).code == 0
        bob = server.service.store.get_user("bob")
        assert bob is not None and bob.token_expires is not None
        assert abs(bob.token_expires - (time.time() + seconds)) < 60
    for bad in ("0", "-5", "soon", "5w", "", "nan", "99999d"):
        refused(cli("token", "create", "carol", "--expires", bad, env=env), "--expires")
    assert server.service.store.get_user("carol") is None
    token = r.out.splitlines()[1]
    r = cli("token", "revoke", "alice", env=env)
    assert r.code == 0 and "revoked" in r.out, r.err
    refused(cli("jobs", env={**env, "CORRAL_TOKEN": token}), "invalid token")
    refused(cli("token", "revoke", "nobody", env=env), "name: no user 'nobody'")
    refused(cli("token", "revoke", "a b", env=env), "name:")


# -- HTTPS -----------------------------------------------------------------------------------------


@dataclass
class Pem:
    cert: Path
    key: Path


def make_certs(folder: Path) -> dict[str, Pem]:
    """A CA, a server certificate it signed, a self-signed server certificate (all for 127.0.0.1) and an
    unrelated CA, written as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    folder.mkdir(parents=True, exist_ok=True)

    def cert(
        name: str, *, ca: bool, server: bool, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        signer_cert, signer_key = issuer if issuer else (None, key)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(signer_cert.subject if signer_cert else subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        )
        if signer_cert is not None:
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_key.public_key()), critical=False
            )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
            )
        if ca:
            builder = builder.add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
        made = builder.sign(signer_key, hashes.SHA256())
        (folder / f"{name}.pem").write_bytes(made.public_bytes(serialization.Encoding.PEM))
        (folder / f"{name}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return made, key

    ca = cert("ca", ca=True, server=False, issuer=None)
    cert("signed", ca=False, server=True, issuer=ca)
    cert("selfsigned", ca=True, server=True, issuer=None)
    cert("otherca", ca=True, server=False, issuer=None)
    return {n: Pem(folder / f"{n}.pem", folder / f"{n}.key") for n in ("ca", "signed", "selfsigned", "otherca")}


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Pem]:
    return make_certs(tmp_path_factory.mktemp("certs"))


@contextmanager
def https_server(home: Path, pem: Pem, *extra: str) -> Iterator[str]:
    """`corral server --tls-cert --tls-key` in a subprocess; yields its https URL once it answers."""
    port = free_port()
    proc = subprocess.Popen(
        corral_cmd(
            "server",
            "--port",
            str(port),
            "--home",
            str(home),
            "--devices",
            "2",
            "--round",
            "0.5",
            "--tls-cert",
            str(pem.cert),
            "--tls-key",
            str(pem.key),
            *extra,
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k not in ("CORRAL_CA_CERT", "CORRAL_DB")}
        | {"OMP_NUM_THREADS": "1"},
    )
    url = f"https://127.0.0.1:{port}"
    trust = ssl.create_default_context(cafile=str(pem.cert if "self" in pem.cert.name else pem.cert.parent / "ca.pem"))
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.communicate()[0]
            try:
                if httpx.get(f"{url}/api/v1/health", verify=trust, timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the https server did not start"
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


@pytest.mark.parametrize("kind", ["signed", "selfsigned"])
def test_the_cli_works_over_https_and_refuses_an_untrusted_server(
    cli: Callable[..., Result], certs: dict[str, Pem], tmp_path: Path, kind: str
) -> None:
    home = tmp_path / "home"
    trusted = certs["ca"].cert if kind == "signed" else certs["selfsigned"].cert
    with https_server(home, certs[kind]) as url:
        env = {"CORRAL_SERVER": url, "CORRAL_HOME": str(home)}  # the token the server wrote under its home
        r = cli("jobs", "--ca-cert", str(trusted), env=env)
        assert r.code == 0 and "no jobs" in r.out, r.err
        r = cli("cluster", env={**env, "CORRAL_CA_CERT": str(trusted)})
        assert r.code == 0 and "0/2 devices in use" in r.out, r.err
        # Not trusted: the system's CAs, or another CA; the line names the certificate problem.
        for extra in ([], ["--ca-cert", str(certs["otherca"].cert)]):
            line = refused(cli("jobs", *extra, env=env), f"cannot connect securely to the corral server at {url}")
            assert "certificate is not trusted" in line and "--ca-cert" in line, line
        refused(cli("jobs", env={**env, "CORRAL_CA_CERT": str(certs["otherca"].cert)}), "not trusted")
        # The CA file itself is checked first.
        refused(cli("jobs", "--ca-cert", str(tmp_path / "none.pem"), env=env), "--ca-cert", "is not a file")
        (tmp_path / "junk.pem").write_text("not a certificate\n")
        refused(cli("jobs", "--ca-cert", str(tmp_path / "junk.pem"), env=env), "--ca-cert", "no PEM certificate")
        refused(cli("jobs", env={**env, "CORRAL_CA_CERT": str(tmp_path / "junk.pem")}), "CORRAL_CA_CERT")


def test_server_refuses_bad_tls_options_and_starts_nothing(
    cli: Callable[..., Result], certs: dict[str, Pem], tmp_path: Path
) -> None:
    home = tmp_path / "home"
    base = ["server", "--port", str(free_port()), "--home", str(home)]
    signed, other = certs["signed"], certs["otherca"]
    refused(cli(*base, "--tls-cert", str(signed.cert)), "--tls-cert and --tls-key go together")
    refused(cli(*base, "--tls-key", str(signed.key)), "--tls-cert and --tls-key go together")
    refused(
        cli(*base, "--tls-cert", str(tmp_path / "no.pem"), "--tls-key", str(signed.key)), "--tls-cert", "not a file"
    )
    refused(cli(*base, "--tls-cert", str(signed.cert), "--tls-key", str(tmp_path)), "--tls-key", "not a file")
    refused(cli(*base, "--tls-cert", str(signed.cert), "--tls-key", str(other.key)), "--tls-key", "is not the key")
    (tmp_path / "junk.pem").write_text("junk\n")
    refused(cli(*base, "--tls-cert", str(tmp_path / "junk.pem"), "--tls-key", str(signed.key)), "--tls-cert/--tls-key")
    if os.geteuid() != 0:  # root reads any file
        unreadable = tmp_path / "unreadable.key"
        unreadable.write_bytes(signed.key.read_bytes())
        unreadable.chmod(0)
        refused(cli(*base, "--tls-cert", str(signed.cert), "--tls-key", str(unreadable)), "--tls-key", "cannot read")
    tls = ["--tls-cert", str(signed.cert), "--tls-key", str(signed.key)]
    refused(cli(*base, "--ca-cert", str(certs["ca"].cert)), "--ca-cert goes with --tls-cert")
    refused(cli(*base, *tls, "--ca-cert", str(tmp_path / "junk.pem")), "--ca-cert", "no PEM certificate")
    assert not home.exists()


JOB = """
import os, sys
from corral.runtime.report import Reporter
ckpt = os.environ["CORRAL_CHECKPOINT_DIR"]
os.makedirs(ckpt, exist_ok=True)
with open(os.path.join(ckpt, "state.txt"), "w") as f:
    f.write("step 1")
print("ca", os.environ.get("CORRAL_CA_CERT"), "server", os.environ.get("CORRAL_SERVER"), flush=True)
r = Reporter.from_env()
r.report(1, {"loss": 0.5})
r.close(5.0)
sys.exit(0 if r.sent == 1 else 3)
"""


def test_jobs_report_over_https_with_the_servers_ca_and_the_home_is_private(
    certs: dict[str, Pem], tmp_path: Path
) -> None:
    """`--ca-cert` reaches the jobs (CORRAL_CA_CERT); their metrics go through a verified connection; then no
    file or folder of the service's home (database, logs, job folders, checkpoints) is open to others."""
    home = tmp_path / "home"
    (tmp_path / "job.py").write_text(JOB)
    with https_server(home, certs["signed"], "--ca-cert", str(certs["ca"].cert)) as url:
        token = (home / "admin-token").read_text().strip()
        c = httpx.Client(
            base_url=url + API,
            headers={"Authorization": f"Bearer {token}"},
            verify=ssl.create_default_context(cafile=str(certs["ca"].cert)),
            timeout=30,
        )
        spec = {"name": "tls", "entrypoint": f"{sys.executable} {tmp_path / 'job.py'}", "workdir": str(tmp_path)}
        job = c.post("/jobs", json=spec).json()
        deadline = time.monotonic() + 120
        while (state := c.get(f"/jobs/{job['id']}").json()["state"]) not in ("SUCCEEDED", "FAILED", "CANCELLED"):
            assert time.monotonic() < deadline, state
            time.sleep(0.3)
        logs = c.get(f"/jobs/{job['id']}/logs").text
        assert state == "SUCCEEDED", logs
        assert f"ca {certs['ca'].cert} server {url}" in logs
        assert [m["values"] for m in c.get(f"/jobs/{job['id']}/metrics").json()["metrics"]] == [{"loss": 0.5}]
    assert list(home.glob("**/state.txt")) and (home / "corral.db").exists()
    assert open_to_others(home) == []


def open_to_others(home: Path) -> list[str]:
    """Everything under `home` (itself included) with a group or other permission bit, as 'MODE PATH'."""
    found = []
    for path in [home, *home.rglob("*")]:
        mode = path.lstat().st_mode
        if not stat.S_ISLNK(mode) and mode & 0o077:
            found.append(f"{stat.filemode(mode)} {path}")
    return found


def test_reporter_refuses_a_server_it_does_not_trust(
    certs: dict[str, Pem], tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from corral.runtime.report import Reporter

    with https_server(tmp_path / "home", certs["signed"]) as url:
        r = Reporter(url, "1", "whatever", ca_cert=str(certs["otherca"].cert))
        r.report(1, {"loss": 0.5})
        r.close(5.0)
    assert r.sent == 0 and r.dropped == 1
    err = capfd.readouterr().err
    assert err.count("[corral] metrics:") == 1 and "cannot verify the service's certificate" in err, err
    assert "CORRAL_CA_CERT" in err


# -- a private home --------------------------------------------------------------------------------


def test_an_open_home_is_made_private_at_start(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    home = tmp_path / "home"
    (home / "jobs" / "1" / "logs").mkdir(parents=True)
    for f in (home / "corral.db", home / "corral.db-wal", home / "jobs" / "1" / "logs" / "rank0.log"):
        f.write_text("")
        f.chmod(0o644)
    for d in (home, home / "jobs", home / "jobs" / "1", home / "jobs" / "1" / "logs"):
        d.chmod(0o755)
    (home / "link").symlink_to("/etc/hostname")
    (home / "corral.db").unlink()  # the store makes a real database
    with caplog.at_level(logging.WARNING, logger="corral.service"):
        service = Service(ServiceConfig(home=home, devices=1))
    try:
        assert open_to_others(home) == []
        assert stat.S_IMODE(home.stat().st_mode) == 0o700
        assert stat.S_IMODE((home / "corral.db").stat().st_mode) == 0o600
        assert any("private" in r.getMessage() and str(home) in r.getMessage() for r in caplog.records)
    finally:
        service.store.close()
