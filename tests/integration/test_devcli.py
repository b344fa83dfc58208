"""The integrator commands against a live server: login and the profile, ``api``, ``listen``
forwarding real events, ``trigger`` producing each event type, ``logs tail``."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks import Webhook
from typer.testing import CliRunner

from openpse import devcli
from openpse.cli import app
from openpse_sdk import webhooks
from tests.support.receiver import Receiver, Reply
from tests.support.servers import openpse_bin

VISA = "4242424242424242"


@pytest.fixture
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "openpse-config"
    monkeypatch.setenv("OPENPSE_CONFIG_DIR", str(path))
    for name in ("OPENPSE_ACCESS_KEY", "OPENPSE_SECRET", "OPENPSE_BASE_URL",
                 "OPENPSE_WEBHOOK_SECRET"):
        monkeypatch.delenv(name, raising=False)
    return path


def _flags(merchant) -> list[str]:
    return ["--key", merchant.access_key, "--secret", merchant.secret,
            "--base-url", merchant.base_url]


def cli(*args: str, env: dict[str, str] | None = None, input: str | None = None) -> Any:
    return CliRunner().invoke(app, list(args), env=env, input=input)


def _env(config: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENPSE_ACCESS_KEY", "OPENPSE_SECRET", "OPENPSE_BASE_URL")}
    env.update(OPENPSE_CONFIG_DIR=str(config), **extra)
    return env


class LiveProcess:
    """A CLI subprocess whose stdout and stderr lines are collected as they come."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen([openpse_bin(), *args], env=env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.out: list[str] = []
        self.err: list[str] = []
        for stream, sink in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=self._pump, args=(stream, sink), daemon=True).start()

    @staticmethod
    def _pump(stream: Any, sink: list[str]) -> None:
        for line in stream:
            sink.append(line.rstrip("\n"))

    def wait_for(self, sink: list[str], text: str, timeout_s: float = 20.0) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in list(sink):
                if text in line:
                    return line
            if self.proc.poll() is not None and not any(text in ln for ln in sink):
                time.sleep(0.2)  # let the pumps drain
                if not any(text in ln for ln in sink):
                    break
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not seen; stdout={self.out} stderr={self.err}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(10)


# ---- login and credentials ---------------------------------------------------------------------

def test_login_writes_a_private_profile_the_binary_uses(merchant, config_dir: Path) -> None:
    result = cli("login", *_flags(merchant))
    assert result.exit_code == 0, result.output
    profile = config_dir / "profile.json"
    assert stat.S_IMODE(profile.stat().st_mode) == 0o600
    assert stat.S_IMODE(config_dir.stat().st_mode) == 0o700
    assert json.loads(profile.read_text())["access_key"] == merchant.access_key
    assert merchant.merchant_id in result.stdout
    # the real `openpse` binary: the commands are mounted into cli.py and read the profile
    done = subprocess.run([openpse_bin(), "api", "GET", "/v1/whoami"], env=_env(config_dir),
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["access_key"] == merchant.access_key


def test_login_refuses_a_wrong_secret_and_writes_nothing(merchant, config_dir: Path) -> None:
    result = cli("login", "--key", merchant.access_key, "--secret", "sk_test_wrong",
                 "--base-url", merchant.base_url)
    assert result.exit_code == 1
    assert "invalid_signature" in result.stderr
    assert not (config_dir / "profile.json").exists()


def test_login_prompts_for_the_secret(merchant, config_dir: Path) -> None:
    result = cli("login", "--key", merchant.access_key, "--base-url", merchant.base_url,
                 input=merchant.secret + "\n")
    assert result.exit_code == 0, result.output
    assert merchant.secret not in result.stdout
    assert json.loads((config_dir / "profile.json").read_text())["secret"] == merchant.secret


async def test_flags_beat_environment_beats_profile(services, server, merchant,
                                                    config_dir: Path) -> None:
    from tests.conftest import new_merchant

    other = await new_merchant(services, server.base_url)
    third = await new_merchant(services, server.base_url)
    assert cli("login", *_flags(merchant)).exit_code == 0

    def whoami(*args: str, env: dict[str, str] | None = None) -> str:
        result = cli("api", "GET", "whoami", *args, env=env)
        assert result.exit_code == 0, result.output
        return str(json.loads(result.stdout)["access_key"])

    env = {"OPENPSE_ACCESS_KEY": other.access_key, "OPENPSE_SECRET": other.secret}
    assert whoami() == merchant.access_key
    assert whoami(env=env) == other.access_key
    assert whoami("--key", third.access_key, "--secret", third.secret, env=env) == \
        third.access_key
    half = cli("api", "GET", "whoami", "--key", third.access_key)
    assert half.exit_code == 2 and "both" in half.stderr


def test_no_credentials_is_a_usage_error(config_dir: Path) -> None:
    result = cli("api", "GET", "/v1/balance")
    assert result.exit_code == 2
    assert "openpse login" in result.stderr


# ---- api ---------------------------------------------------------------------------------------

def test_api_post_get_and_query(merchant, config_dir: Path, tmp_path: Path) -> None:
    order = "ord-" + uuid.uuid4().hex[:10]
    body = tmp_path / "payment.json"
    body.write_text(json.dumps({
        "amount": 3000, "currency": "JPY", "merchant_order_id": order, "confirm": True,
        "payment_method": {"type": "card", "card": {"number": VISA, "exp_month": 12,
                                                    "exp_year": 2034, "cvc": "123"}}}))
    created = cli("api", "POST", "/v1/payments", "--data", f"@{body}", "-i", *_flags(merchant))
    assert created.exit_code == 0, created.output
    payment = json.loads(created.stdout)
    assert payment["status"] == "succeeded"
    assert created.stdout.startswith("{\n  ")  # pretty-printed
    assert "HTTP 201 request req_" in created.stderr

    listed = cli("api", "GET", f"payments?merchant_order_id={order}", "--query", "limit=1",
                 *_flags(merchant))
    assert listed.exit_code == 0, listed.output
    assert [p["id"] for p in json.loads(listed.stdout)["data"]] == [payment["id"]]

    canceled = cli("api", "POST", f"/v1/payments/{payment['id']}/cancel", *_flags(merchant))
    assert canceled.exit_code == 1  # a succeeded payment cannot be canceled
    assert "invalid_request_error / payment_invalid_state" in canceled.stderr


def test_api_errors_show_type_code_message_and_request_id(merchant, config_dir: Path) -> None:
    result = cli("api", "GET", "/v1/payments/pay_missing", *_flags(merchant))
    assert result.exit_code == 1
    assert "HTTP 404 invalid_request_error / resource_missing" in result.stderr
    assert "message:" in result.stderr and "param:      id" in result.stderr
    request_id = json.loads(result.stdout)["error"]["request_id"]
    assert f"request_id: {request_id}" in result.stderr

    wrong = cli("api", "GET", "/v1/balance", "--key", merchant.access_key, "--secret", "nope",
                "--base-url", merchant.base_url)
    assert wrong.exit_code == 1
    assert "invalid_signature" in wrong.stderr and "string_to_sign" in wrong.stderr

    for args in (["GET", "/v1/balance", "--data", "{nope"],
                 ["GET", "/v1/balance", "--data", "{}"],
                 ["FETCH", "/v1/balance"],
                 ["GET", "/v1/payments", "--query", "novalue"]):
        usage = cli("api", *args, *_flags(merchant))
        assert usage.exit_code == 2, (args, usage.output)


# ---- listen ------------------------------------------------------------------------------------

def test_listen_forwards_real_events_signed_and_retried(merchant, config_dir: Path) -> None:
    secret = cli("listen", "--print-secret").stdout.strip()
    assert secret.startswith("whsec_")
    assert cli("listen", "--print-secret").stdout.strip() == secret  # stable
    assert stat.S_IMODE((config_dir / "listen_secret").stat().st_mode) == 0o600

    def flaky(request: Any, seen: int) -> Reply:
        event = json.loads(request.body)
        return Reply(503) if event["type"] == "payment.created" and seen == 0 else Reply(200)

    with merchant.sdk() as client, Receiver() as receiver:
        receiver.on("/hook", flaky)
        before = client.payments.create(  # its events predate listen: never forwarded
            amount=100, currency="JPY", merchant_order_id="before", confirm=True,
            payment_method={"type": "card", "card": {"number": VISA, "exp_month": 12,
                                                     "exp_year": 2034, "cvc": "123"}})
        listener = LiveProcess(
            ["listen", "--forward-to", receiver.url("/hook"), "--events",
             "payment.created,payment.succeeded", "--max-events", "2", "--timeout", "30",
             "--interval", "0.2", *_flags(merchant)], _env(config_dir))
        try:
            listener.wait_for(listener.err, "Ready!")
            assert secret in "\n".join(listener.err)
            payment = client.payments.create(
                amount=700, currency="JPY", merchant_order_id="during", confirm=True,
                payment_method={"type": "card", "card": {"number": VISA, "exp_month": 12,
                                                         "exp_year": 2034, "cvc": "123"}})
            assert listener.proc.wait(30) == 0, listener.err
        finally:
            listener.stop()
    delivered = receiver.at("/hook")
    events = [webhooks.verify(r.body, r.headers, secret) for r in delivered]
    assert [Webhook(secret).verify(r.body, r.headers) for r in delivered] == events
    assert {e["data"]["object"]["id"] for e in events} == {payment["id"]}
    assert before["id"] not in {e["data"]["object"]["id"] for e in events}
    assert [e["type"] for e in events] == ["payment.created", "payment.created",
                                           "payment.succeeded"]
    assert delivered[0].webhook_id == delivered[1].webhook_id == events[0]["id"]
    listener.wait_for(listener.out, "payment.succeeded")
    lines = listener.out
    assert len(lines) == 2 and all("[200]" in line for line in lines)
    assert "after 2 attempts" in lines[0] and events[0]["id"] in lines[0]


def test_listen_times_out_without_events(merchant, config_dir: Path) -> None:
    result = cli("listen", "--forward-to", "http://127.0.0.1:9/none", "--once", "--timeout",
                 "0.5", "--interval", "0.1", *_flags(merchant))
    assert result.exit_code == 1
    assert "forwarded 0 event(s)" in result.stderr
    bad = cli("listen", "--forward-to", "ftp://x", *_flags(merchant))
    assert bad.exit_code == 2


# ---- trigger -----------------------------------------------------------------------------------

@pytest.mark.parametrize("event_type", sorted(devcli.TRIGGERS))
def test_trigger_produces_the_named_event(merchant, config_dir: Path, event_type: str) -> None:
    result = cli("trigger", event_type, *_flags(merchant))
    assert result.exit_code == 0, result.output
    _word, named, event_id, _for, object_id = result.stdout.split()
    assert named == event_type
    with merchant.sdk() as client:
        event = client.events.retrieve(event_id)
    assert event["type"] == event_type and event["data"]["object"]["id"] == object_id


def test_trigger_refuses_unknown_types_and_live_keys(merchant, config_dir: Path) -> None:
    unknown = cli("trigger", "payment.teleported", *_flags(merchant))
    assert unknown.exit_code == 2 and "payment.succeeded" in unknown.stderr
    live = cli("trigger", "payment.succeeded", "--key", "ak_live_x", "--secret", "s",
               "--base-url", merchant.base_url)
    assert live.exit_code == 2 and "sandbox key" in live.stderr


# ---- logs tail ---------------------------------------------------------------------------------

def test_logs_tail_and_follow(merchant, config_dir: Path) -> None:
    with merchant.sdk(max_retries=0) as client:
        with pytest.raises(Exception):
            client.payments.retrieve("pay_tail_before")
        deadline = time.monotonic() + 10
        while True:
            tail = cli("logs", "tail", "--limit", "5", *_flags(merchant))
            assert tail.exit_code == 0, tail.output
            if "pay_tail_before" in tail.stdout or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        line = next(ln for ln in tail.stdout.splitlines() if "pay_tail_before" in ln)
        assert "GET" in line and " 404 " in line and "resource_missing" in line
        assert "/v1/request_logs" not in tail.stdout  # its own polling is left out

        follower = LiveProcess(["logs", "tail", "--follow", "--limit", "1", "--interval", "0.2",
                                "--timeout", "30", *_flags(merchant)], _env(config_dir))
        try:
            follower.wait_for(follower.err, "following")
            with pytest.raises(Exception):
                client.payments.retrieve("pay_tail_followed")
            followed = follower.wait_for(follower.out, "pay_tail_followed")
        finally:
            follower.stop()
    assert " 404 " in followed
    assert sum("pay_tail_followed" in ln for ln in follower.out) == 1
