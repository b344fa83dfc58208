"""``openpse doctor`` against a clean integration and against deliberately broken ones: each
finding is reported with a fix, and the exit status is non-zero when anything fails."""

from __future__ import annotations

import datetime
import json
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from typer.testing import CliRunner

from openpse import doctor as doctor_module
from openpse.cli import app
from openpse_sdk import client as client_module
from openpse_sdk import webhooks
from openpse_sdk.errors import SignatureVerificationError
from tests.support.receiver import Receiver, Reply
from tests.support.servers import free_port


@pytest.fixture(autouse=True)
def _isolated_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENPSE_CONFIG_DIR", str(tmp_path / "cfg"))
    for name in ("OPENPSE_ACCESS_KEY", "OPENPSE_SECRET", "OPENPSE_BASE_URL",
                 "OPENPSE_WEBHOOK_SECRET"):
        monkeypatch.delenv(name, raising=False)


def doctor(key: str, secret: str, base_url: str, *args: str) -> tuple[int, list[dict[str, Any]]]:
    result = CliRunner().invoke(app, ["doctor", "--json", "--key", key, "--secret", secret,
                                      "--base-url", base_url, *args])
    assert result.exit_code in (0, 1), result.output
    findings = json.loads(result.stdout)
    for finding in findings:
        if finding["status"] in ("WARN", "FAIL"):
            assert finding["fix"], finding  # every finding says how to fix it
    return result.exit_code, findings


def run_doctor(merchant, *args: str) -> tuple[int, list[dict[str, Any]]]:
    return doctor(merchant.access_key, merchant.secret, merchant.base_url, *args)


def statuses(findings: list[dict[str, Any]], check: str) -> list[tuple[str, str]]:
    return [(f["status"], f["detail"]) for f in findings if f["check"].startswith(check)]


def failed(findings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [f for f in findings if f["status"] == "FAIL"]


def verifying_handler(secret: str) -> Any:
    """A correct handler: verifies, acknowledges duplicates, refuses anything unverified."""

    def behaviour(request: Any, _seen: int) -> Reply:
        try:
            webhooks.verify(request.body, request.headers, secret)
        except SignatureVerificationError as exc:
            return Reply(400, body=str(exc.code).encode())
        return Reply(200)

    return behaviour


# ---- a clean integration ---------------------------------------------------------------------

def test_clean_integration(merchant) -> None:
    with Receiver() as receiver, merchant.sdk() as client:
        endpoint = client.webhook_endpoints.create(url=receiver.url("/hook"),
                                                   enabled_events=["*"])
        receiver.on("/hook", verifying_handler(endpoint["secret"]))
        code, findings = run_doctor(merchant, "--endpoint", receiver.url("/hook"),
                                    "--endpoint-secret", endpoint["secret"])
    assert code == 0, failed(findings)
    assert not [f for f in findings if f["status"] in ("FAIL", "WARN")], findings
    checks = {f["check"] for f in findings}
    assert {"server", "clock", "access key", "mode", "key state", "ip allowlist",
            f"endpoint {endpoint['id']}", "conformance"} <= checks
    conformance = statuses(findings, "conformance")
    assert [s for s, _ in conformance] == ["PASS"] * 5
    assert "signed event accepted" in conformance[0][1]
    assert "duplicate" in conformance[-1][1]
    [(_, allow)] = statuses(findings, "ip allowlist")
    assert "127.0.0.1" in allow


def test_human_output_and_profile_permissions(merchant, tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["login", "--key", merchant.access_key, "--secret",
                               merchant.secret, "--base-url", merchant.base_url]).exit_code == 0
    profile = tmp_path / "cfg" / "profile.json"
    profile.chmod(0o644)
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 0, result.output
    assert "WARN  profile" in result.stdout and "fix: chmod 600" in result.stdout
    assert "SKIP  conformance" in result.stdout
    assert "0 failed" in result.stdout


# ---- deliberately broken ---------------------------------------------------------------------

def test_endpoint_that_accepts_everything_fails_conformance(merchant) -> None:
    secret = webhooks.SECRET_PREFIX + "c2VjcmV0LWZvci1hLWNhcmVsZXNzLWhhbmRsZXIhIQ=="
    with Receiver() as receiver:  # answers 200 to anything
        code, findings = run_doctor(merchant, "--endpoint", receiver.url("/hook"),
                                    "--endpoint-secret", secret)
        sent = receiver.at("/hook")
    assert code == 1
    fails = [d for s, d in statuses(findings, "conformance") if s == "FAIL"]
    assert len(fails) == 3
    assert any("wrong signature" in d for d in fails)
    assert any("stale timestamp" in d for d in fails)
    assert any("future timestamp" in d for d in fails)
    assert len(sent) == 5
    assert sent[0].webhook_id == sent[-1].webhook_id  # the duplicate is the same event


def test_handler_refusing_duplicates_and_good_events(merchant) -> None:
    secret = webhooks.SECRET_PREFIX + "c2VjcmV0LWZvci1hLWZvcmdldGZ1bC1oYW5kbGVyISE="
    good = verifying_handler(secret)

    def no_duplicates(request: Any, seen: int) -> Reply:
        return Reply(409) if seen else good(request, seen)

    with Receiver() as receiver:
        receiver.on("/dup", no_duplicates)
        receiver.on("/wrong", verifying_handler(webhooks.SECRET_PREFIX + "A" * 44))
        _code, dup = run_doctor(merchant, "--endpoint", receiver.url("/dup"),
                                "--endpoint-secret", secret)
        code, wrong = run_doctor(merchant, "--endpoint", receiver.url("/wrong"),
                                 "--endpoint-secret", secret)
    assert [d for s, d in statuses(dup, "conformance") if s == "FAIL"] == [
        next(d for s, d in statuses(dup, "conformance") if "redelivery" in d)]
    assert code == 1
    first = statuses(wrong, "conformance")[0]
    assert first[0] == "FAIL" and "correctly signed event was refused" in first[1]


def test_unreachable_and_disabled_endpoints(merchant) -> None:
    closed = f"http://127.0.0.1:{free_port()}/hook"
    with merchant.sdk() as client:
        down = client.webhook_endpoints.create(url=closed, enabled_events=["*"])
        off = client.webhook_endpoints.create(url=closed + "2", enabled_events=["*"])
        client.webhook_endpoints.update(off["id"], enabled=False)
    code, findings = run_doctor(merchant)
    assert code == 1
    down_findings = statuses(findings, f"endpoint {down['id']}")
    assert down_findings[0][0] == "FAIL" and "not reachable" in down_findings[0][1]
    # webhook_endpoint.disabled (for `off`) is on its way to `down` and cannot arrive
    assert all(s == "WARN" and "last delivery" in d for s, d in down_findings[1:])
    off_findings = statuses(findings, f"endpoint {off['id']}")
    assert any(s == "FAIL" and "disabled" in d for s, d in off_findings)


def test_revoked_key(merchant) -> None:
    with merchant.sdk() as client:
        extra = client.access_keys.create()
        client.access_keys.revoke(extra["id"])
    code, findings = doctor(extra["id"], extra["secret"], merchant.base_url)
    assert code == 1
    [(status, detail)] = statuses(findings, "access key")
    assert status == "FAIL" and "revoked" in detail


def test_wrong_secret_and_unknown_key(merchant) -> None:
    code, findings = doctor(merchant.access_key, "sk_test_wrong", merchant.base_url)
    assert code == 1 and "secret does not match" in statuses(findings, "access key")[0][1]
    code, findings = doctor("ak_test_unknown000", "x", merchant.base_url)
    assert code == 1 and "does not know" in statuses(findings, "access key")[0][1]


def test_ip_allowlist_excluding_this_host(merchant) -> None:
    with merchant.sdk() as client:
        fenced = client.access_keys.create(ip_allowlist=["10.0.0.0/8"])
        allowed = client.access_keys.create(ip_allowlist=["10.0.0.0/8", "127.0.0.0/8"])
    code, findings = doctor(fenced["id"], fenced["secret"], merchant.base_url)
    assert code == 1
    [(status, detail)] = statuses(findings, "ip allowlist")
    assert status == "FAIL" and "127.0.0.1" in detail
    assert statuses(findings, "access key")[0][0] == "PASS"
    code, findings = doctor(allowed["id"], allowed["secret"], merchant.base_url)
    assert statuses(findings, "ip allowlist") == [
        ("PASS", "this host (127.0.0.1) is allowed by 127.0.0.0/8")]


def test_rotated_key_is_a_warning(merchant) -> None:
    with merchant.sdk() as client:
        old = client.access_keys.create()
        new = client.access_keys.rotate(old["id"], overlap_seconds=7200)
    _code, findings = doctor(old["id"], old["secret"], merchant.base_url)
    [(status, detail)] = statuses(findings, "key state")
    assert status == "WARN" and "stops working" in detail
    assert any(new["id"] in (f["fix"] or "") for f in findings)


def test_clock_skew(merchant, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_module, "_unix_now_s", lambda: int(time.time()) + 400)
    monkeypatch.setattr(doctor_module, "_now_s", lambda: time.time() + 400)
    code, findings = run_doctor(merchant)
    assert code == 1
    [(status, detail)] = statuses(findings, "clock")
    assert status == "FAIL" and "40" in detail and "ahead of" in detail
    assert statuses(findings, "access key")[0][0] == "SKIP"


def test_server_unreachable() -> None:
    code, findings = doctor("ak_test_x", "s", f"http://127.0.0.1:{free_port()}")
    assert code == 1 and statuses(findings, "server")[0][0] == "FAIL"


# ---- TLS -------------------------------------------------------------------------------------

def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificates(tmp: Path, days: int) -> tuple[Path, Path, Path]:
    """A CA and a leaf for ``localhost`` valid for ``days``; returns (ca, cert, key) paths."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name(f"doctor test CA {days}")
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=400))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder().subject_name(_name("localhost"))
            .issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=days, hours=12))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = (tmp / f"ca-{days}.pem", tmp / f"leaf-{days}.pem", tmp / f"key-{days}.pem")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


class _Ok(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", "0")))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def https_server(cert: Path, key: Path) -> Iterator[int]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(httpd.server_address[1])
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_tls_certificates(merchant, tmp_path: Path) -> None:
    ca_long, cert_long, key_long = _certificates(tmp_path, 200)
    ca_short, cert_short, key_short = _certificates(tmp_path, 5)
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(ca_long.read_bytes() + ca_short.read_bytes())
    with https_server(cert_long, key_long) as long_port, \
            https_server(cert_short, key_short) as short_port, merchant.sdk() as client:
        good = client.webhook_endpoints.create(url=f"https://localhost:{long_port}/hook",
                                               enabled_events=["*"])
        soon = client.webhook_endpoints.create(url=f"https://localhost:{short_port}/hook",
                                               enabled_events=["*"])
        code, trusted = run_doctor(merchant, "--ca-bundle", str(bundle))
        code_untrusted, untrusted = run_doctor(merchant)
    [(status, detail)] = statuses(trusted, f"endpoint {good['id']}")
    assert status == "PASS" and "valid for 200 more days" in detail
    [(status, detail)] = statuses(trusted, f"endpoint {soon['id']}")
    assert status == "WARN" and "expires in 5 day(s)" in detail
    assert code == 0
    assert code_untrusted == 1
    for endpoint in (good, soon):
        [(status, detail)] = statuses(untrusted, f"endpoint {endpoint['id']}")
        assert status == "FAIL" and "certificate not valid" in detail
