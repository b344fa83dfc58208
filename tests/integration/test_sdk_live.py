"""The SDK against a live ``openpse serve`` (sync and async), its retries against a server that
fails on purpose, and its webhook verifier against real deliveries."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook

import openpse_sdk
from openpse_sdk import AsyncOpenPSE, OpenPSE, webhooks
from openpse_sdk import client as client_module
from openpse_sdk.errors import (
    APIError,
    AuthenticationError,
    CardError,
    InvalidRequestError,
    NotFoundError,
    SignatureVerificationError,
)
from tests.support.receiver import Receiver
from tests.support.threaded_app import ThreadedApp

VISA = "4242424242424242"
THREE_DS = "4000000000003220"
DECLINED = "4000000000000002"


def _card(number: str = VISA) -> dict[str, Any]:
    return {"type": "card", "card": {"number": number, "exp_month": 12, "exp_year": 2034,
                                     "cvc": "123"}}


def _pay(client: OpenPSE, order: str, number: str = VISA, **kw: Any) -> dict[str, Any]:
    return client.payments.create(amount=2000, currency="JPY", merchant_order_id=order,
                                  payment_method=_card(number), confirm=True, **kw)


def _order() -> str:
    return "ord-" + uuid.uuid4().hex[:12]


# ---- the whole surface, synchronous ----------------------------------------------------------

def test_sync_client_against_the_server(merchant) -> None:
    with merchant.sdk() as client:
        me = client.account.whoami()
        assert me["access_key"] == merchant.access_key and me["livemode"] is False
        assert me["client_ip"] == "127.0.0.1" and me["server_time"].endswith("Z")
        assert client.account.retrieve()["id"] == merchant.merchant_id

        order = _order()
        paid = [_pay(client, order) for _ in range(5)]
        assert {p["status"] for p in paid} == {"succeeded"}
        assert client.last_response is not None and client.last_response.request_id
        # every list follows its cursors: 5 items in pages of 2
        listed = list(client.payments.list_all(merchant_order_id=order, limit=2))
        assert [p["id"] for p in listed] == [p["id"] for p in reversed(paid)]
        assert client.payments.retrieve(paid[0]["id"])["amount"] == 2000

        refund = client.refunds.create(payment=paid[0]["id"], amount=500)
        assert refund["status"] in ("pending", "succeeded")
        assert [r["id"] for r in client.refunds.list_all(payment=paid[0]["id"])] == [refund["id"]]
        assert client.refunds.retrieve(refund["id"])["amount"] == 500

        types = {e["type"] for e in client.events.list_all(object_id=paid[0]["id"], limit=1)}
        assert {"payment.created", "payment.succeeded"} <= types
        assert {b["currency"] for b in client.balance.retrieve()["pending"]} == {"JPY"}

        challenged = _pay(client, _order(), THREE_DS)
        assert challenged["status"] == "requires_action"
        done = client.test_helpers.complete_3ds(challenged["id"], outcome="succeed")
        assert done["status"] == "succeeded"

        with pytest.raises(CardError) as declined:
            _pay(client, _order(), DECLINED)
        assert declined.value.code == "card_declined" and declined.value.http_status == 402
        assert declined.value.payment is not None
        assert declined.value.payment["status"] == "failed"
        assert declined.value.request_id and declined.value.request_id.startswith("req_")

        with pytest.raises(NotFoundError) as missing:
            client.payments.retrieve("pay_doesnotexist")
        assert missing.value.code == "resource_missing" and missing.value.param == "id"
        with pytest.raises(InvalidRequestError) as bad:
            client.payments.create(amount=20.5, currency="JPY", merchant_order_id="x")
        assert bad.value.code == "invalid_amount" and bad.value.param == "amount"


def test_access_keys_checkout_and_request_log(merchant) -> None:
    with merchant.sdk() as client:
        key = client.access_keys.retrieve(merchant.access_key)
        assert key["ip_allowlist"] == []
        updated = client.access_keys.update(merchant.access_key,
                                            ip_allowlist=["127.0.0.1/32"], description="ci")
        assert updated["ip_allowlist"] == ["127.0.0.1/32"]
        assert client.access_keys.update(merchant.access_key, ip_allowlist=[])["ip_allowlist"] == []
        assert merchant.access_key in {k["id"] for k in client.access_keys.list_all()}

        session = client.checkout_sessions.create(
            amount=1200, currency="JPY", merchant_order_id=_order(),
            payment_method_types=["card"], success_url="https://shop.example/ok",
            cancel_url="https://shop.example/cancel")
        assert session["status"] == "open" and session["url"]
        assert client.checkout_sessions.retrieve(session["id"])["id"] == session["id"]
        assert session["id"] in {s["id"] for s in client.checkout_sessions.list_all()}
        assert client.checkout_sessions.expire(session["id"])["status"] == "expired"

        deadline = time.monotonic() + 10
        paths: set[str] = set()
        while time.monotonic() < deadline and "/v1/checkout/sessions" not in paths:
            paths = {row["path"] for row in client.request_logs.list_all(limit=100)}
            time.sleep(0.2)
        assert {"/v1/checkout/sessions", f"/v1/access_keys/{merchant.access_key}"} <= paths


# ---- async -----------------------------------------------------------------------------------

async def test_async_client_against_the_server(merchant) -> None:
    async with AsyncOpenPSE(merchant.base_url, merchant.access_key, merchant.secret) as client:
        order = _order()
        created = await asyncio.gather(*[
            client.payments.create(amount=1500, currency="JPY", merchant_order_id=order,
                                   payment_method=_card(), confirm=True) for _ in range(3)])
        assert {p["status"] for p in created} == {"succeeded"}
        ids = [p["id"] async for p in client.payments.list_all(merchant_order_id=order, limit=1)]
        assert sorted(ids) == sorted(p["id"] for p in created)
        assert (await client.account.whoami())["access_key"] == merchant.access_key
        with pytest.raises(CardError) as declined:
            await client.payments.create(amount=1500, currency="JPY", merchant_order_id=order,
                                         payment_method=_card(DECLINED), confirm=True)
        assert declined.value.payment is not None
        with pytest.raises(NotFoundError):
            await client.refunds.retrieve("re_doesnotexist")


def test_clock_skew_gets_a_hint(merchant, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_module, "_unix_now_s", lambda: int(time.time()) + 1000)
    with merchant.sdk(max_retries=0) as client, pytest.raises(AuthenticationError) as info:
        client.balance.retrieve()
    assert info.value.code == "timestamp_out_of_window"
    assert info.value.clock_skew_s is not None and 995 <= info.value.clock_skew_s <= 1005
    assert "ahead of the server's clock; synchronise it" in info.value.message


# ---- retries against a server that fails on purpose -------------------------------------------

class FlakyProxy:
    """An ASGI reverse proxy in front of the real server that misbehaves on a script:
    ``503`` answers without forwarding, ``429`` likewise with ``Retry-After: 1``,
    ``lost`` forwards and then throws the answer away (502), ``pass`` forwards."""

    def __init__(self, upstream: str, script: list[str]) -> None:
        self.upstream = upstream
        self.script = list(script)
        self.seen: list[dict[str, str]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": message["type"] + ".complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        self.seen.append(headers)
        action = self.script.pop(0) if self.script else "pass"
        if action in ("503", "429"):
            error = {"error": {"type": "api_error", "code": "proxy_" + action,
                               "message": "on purpose", "param": None, "request_id": None}}
            extra = [(b"retry-after", b"1" if action == "429" else b"0")]
            await self._answer(send, int(action), extra, json.dumps(error).encode())
            return
        target = self.upstream + scope["raw_path"].decode()
        if scope["query_string"]:
            target += "?" + scope["query_string"].decode()
        forward = {k: v for k, v in headers.items() if k not in ("host", "content-length")}
        async with httpx.AsyncClient() as http:
            answer = await http.request(scope["method"], target, content=body, headers=forward)
        if action == "lost":
            await self._answer(send, 502, [], b"bad gateway")
            return
        keep = [(k.encode(), v.encode()) for k, v in answer.headers.items()
                if k.lower() in ("content-type", "x-request-id", "idempotent-replayed")]
        await self._answer(send, answer.status_code, keep, answer.content)

    @staticmethod
    async def _answer(send: Any, status: int, headers: list[tuple[bytes, bytes]],
                      body: bytes) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _payments_for(merchant, order: str) -> list[dict[str, Any]]:
    with merchant.sdk() as client:
        return list(client.payments.list_all(merchant_order_id=order))


def test_retries_reuse_the_idempotency_key_and_charge_once(merchant) -> None:
    proxy = FlakyProxy(merchant.base_url, ["503", "lost", "pass"])
    order = _order()
    with ThreadedApp(proxy) as served, OpenPSE(served.url, merchant.access_key, merchant.secret,
                                               max_retries=3) as client:
        payment = _pay(client, order)
        assert payment["status"] == "succeeded"
        assert client.last_response is not None and client.last_response.idempotent_replayed
    assert len(proxy.seen) == 3
    keys = {h["idempotency-key"] for h in proxy.seen}
    assert len(keys) == 1 and uuid.UUID(keys.pop()).version == 4
    assert len({h["x-pse-nonce"] for h in proxy.seen}) == 3  # every attempt signed afresh
    assert [p["id"] for p in _payments_for(merchant, order)] == [payment["id"]]


async def test_async_retries_honour_retry_after_and_charge_once(merchant) -> None:
    proxy = FlakyProxy(merchant.base_url, ["lost", "429", "pass"])
    order = _order()
    with ThreadedApp(proxy) as served:
        async with AsyncOpenPSE(served.url, merchant.access_key, merchant.secret,
                                max_retries=3) as client:
            started = time.monotonic()
            payment = await client.payments.create(amount=2000, currency="JPY",
                                                   merchant_order_id=order,
                                                   payment_method=_card(), confirm=True)
            assert time.monotonic() - started >= 1.0  # Retry-After: 1 was waited for
    assert payment["status"] == "succeeded"
    assert len({h["idempotency-key"] for h in proxy.seen}) == 1 and len(proxy.seen) == 3
    assert [p["id"] for p in _payments_for(merchant, order)] == [payment["id"]]


def test_retries_are_bounded(merchant) -> None:
    proxy = FlakyProxy(merchant.base_url, ["503", "503", "503", "pass"])
    order = _order()
    with ThreadedApp(proxy) as served, OpenPSE(served.url, merchant.access_key, merchant.secret,
                                               max_retries=2) as client:
        with pytest.raises(APIError) as info:
            _pay(client, order)
    assert info.value.http_status == 503 and len(proxy.seen) == 3
    assert _payments_for(merchant, order) == []


# ---- webhook verification against real deliveries ---------------------------------------------

def _wait(predicate: Any, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_verify_real_deliveries_and_rotation(merchant) -> None:
    with Receiver() as receiver, merchant.sdk() as client:
        endpoint = client.webhook_endpoints.create(url=receiver.url("/hook"),
                                                   enabled_events=["payment.succeeded"])
        old = endpoint["secret"]
        first = _pay(client, _order())
        receiver.wait_for(lambda: len(receiver.at("/hook")) >= 1)
        [delivery] = receiver.at("/hook")
        event = webhooks.verify(delivery.body, delivery.headers, old)
        assert event["id"] == delivery.webhook_id and event["type"] == "payment.succeeded"
        assert event["data"]["object"]["id"] == first["id"]
        assert event == Webhook(old).verify(delivery.body, delivery.headers)  # the reference
        with pytest.raises(SignatureVerificationError) as wrong:
            webhooks.verify(delivery.body, delivery.headers, webhooks.SECRET_PREFIX + "A" * 44)
        assert wrong.value.code == "no_matching_signature"
        with pytest.raises(SignatureVerificationError):
            webhooks.verify(delivery.body + b" ", delivery.headers, old)
        with pytest.raises(SignatureVerificationError) as late:
            webhooks.verify(delivery.body, delivery.headers, old, now=time.time() + 3600)
        assert late.value.code == "timestamp_too_old"

        new = client.webhook_endpoints.rotate_secret(endpoint["id"],
                                                     expire_previous_in_seconds=3600)["secret"]
        second = _pay(client, _order())
        receiver.wait_for(lambda: len(receiver.at("/hook")) >= 2)
        rotated = receiver.at("/hook")[1]
        assert len(rotated.headers["webhook-signature"].split()) == 2
        for secrets in (old, new, [new, old]):
            got = webhooks.verify(rotated.body, rotated.headers, secrets)
            assert got["data"]["object"]["id"] == second["id"]


def test_version_tracker_on_real_events(merchant) -> None:
    with merchant.sdk() as client:
        payment = _pay(client, _order(), capture_method="manual")
        client.payments.capture(payment["id"])
        events = sorted(client.events.list_all(object_id=payment["id"]),
                        key=lambda e: e["data"]["object"]["version"])
    assert len(events) >= 3
    tracker = webhooks.VersionTracker()
    newest, *older = list(reversed(events))
    assert not tracker.is_stale(newest)
    tracker.record(newest)
    assert all(tracker.is_stale(e) for e in [newest, *older])  # repeats and late arrivals
    versions = [openpse_sdk.webhooks.object_version(e) for e in events]
    assert tracker.last_seen(payment["id"]) == max(versions)
    assert versions == sorted(set(versions))  # every change has its own version
