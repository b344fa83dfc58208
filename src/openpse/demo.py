"""``openpse demo``: the main flows end to end against a fresh embedded database, narrated.

It starts a real server (API + worker) on a free local port, drives it over HTTP with the
merchant SDK exactly as an integration would, and checks every answer. Exit status 0 only if
every step behaved as documented.
"""

from __future__ import annotations

import contextlib
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["run_demo"]

CARD_OK = "4242424242424242"
CARD_3DS = "4000000000003220"
CARD_DECLINED = "4000000000000002"
STARTUP_TIMEOUT_S = 20.0
EXPIRY_WAIT_S = 15.0  # how long the demo waits for the worker to expire a voucher
SHOPPER = {"name": "山田 花子", "email": "hanako@example.jp", "phone": "090-1234-5678"}


class Narrator:
    def __init__(self) -> None:
        self.failures: list[str] = []
        self.count = 0

    def step(self, title: str, fn: Callable[[], str]) -> None:
        self.count += 1
        try:
            detail = fn()
        except Exception as exc:  # the demo reports, it does not crash
            self.failures.append(title)
            print(f"  ✘ {self.count:2d}. {title}\n        {type(exc).__name__}: {exc}", flush=True)
            return
        print(f"  ✔ {self.count:2d}. {title}\n        {detail}", flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise AssertionError(message)


@contextlib.contextmanager
def _server(data_dir: Path) -> Iterator[tuple[str, Any]]:
    import os

    import httpx
    import uvicorn

    from openpse.bootstrap import build_app, ensure_schema
    from openpse.config import Settings

    os.environ["OPENPSE_RUN_WORKER"] = "1"
    settings = Settings(data_dir=data_dir, allow_local_webhooks=True,
                        log_file=data_dir / "server.log", worker_poll_interval_s=0.1)
    ensure_schema(settings, create=True)
    runtime = build_app(settings)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(runtime.asgi, host="127.0.0.1", port=port,
                                           log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                break
        time.sleep(0.05)
    try:
        yield base, settings
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def _merchant(settings: Any) -> tuple[str, str, str]:
    import asyncio

    from openpse.bootstrap import build_services
    from openpse.services import merchants as m

    async def go() -> tuple[str, str, str]:
        svc = build_services(settings)
        try:
            merchant = await m.create_merchant(svc, name="Demo Shop 株式会社")
            issued = await m.create_access_key(svc, merchant["id"], livemode=False)
            return merchant["id"], issued.key["id"], issued.secret
        finally:
            await svc.db.dispose()

    return asyncio.run(go())


def _card(number: str) -> dict[str, Any]:
    return {"type": "card", "card": {"number": number, "exp_month": 12, "exp_year": 2034,
                                     "cvc": "123"}}


def run_demo(data_dir: Path | None = None) -> int:
    try:
        from openpse_sdk import CardError, OpenPSE
    except ImportError:
        print("the demo drives the server through the merchant SDK: pip install -e sdk")
        return 2
    tmp = tempfile.TemporaryDirectory(prefix="openpse-demo-") if data_dir is None else None
    root = Path(tmp.name) if tmp else Path(data_dir or ".")
    print(f"OpenPSE demo — fresh embedded database in {root}\n")
    n = Narrator()
    with _server(root) as (base, settings):
        merchant_id, key, secret = _merchant(settings)
        print(f"  merchant {merchant_id} with sandbox key {key}\n")
        client = OpenPSE(base, key, secret)
        ctx: dict[str, Any] = {"client": client, "base": base, "key": key, "secret": secret,
                               "settings": settings, "CardError": CardError}
        for title, fn in STEPS:
            n.step(title, lambda fn=fn: fn(ctx))  # type: ignore[misc]
        client.close()
    print()
    if n.failures:
        print(f"{len(n.failures)} of {n.count} steps misbehaved: {', '.join(n.failures)}")
    else:
        print(f"All {n.count} steps behaved as documented.")
    if tmp:
        tmp.cleanup()
    return 1 if n.failures else 0


# ---- the steps ----------------------------------------------------------------------------

def step_signed_call(ctx: dict[str, Any]) -> str:
    acct = ctx["client"].request("GET", "/v1/account")
    _check(acct["object"] == "merchant", "expected the merchant object")
    return f"GET /v1/account signed with HMAC-SHA256 → {acct['name']} ({acct['id']})"


def step_bad_signature(ctx: dict[str, Any]) -> str:
    import httpx

    from openpse.domain.signing import sign, string_to_sign

    ts, nonce = str(int(time.time())), uuid.uuid4().hex
    sts = string_to_sign("GET", "/v1/account", "", ts, nonce, b"")
    headers = {"X-PSE-Access-Key": ctx["key"], "X-PSE-Timestamp": ts, "X-PSE-Nonce": nonce,
               "X-PSE-Signature": sign("sk_test_wrong_secret", sts)}
    r = httpx.get(ctx["base"] + "/v1/account", headers=headers)
    err = r.json()["error"]
    _check(r.status_code == 401 and err["code"] == "invalid_signature", r.text)
    _check(err.get("string_to_sign") == sts, "sandbox echoes string_to_sign")
    stale = str(int(time.time()) - 400)
    headers.update({"X-PSE-Timestamp": stale, "X-PSE-Nonce": uuid.uuid4().hex})
    r2 = httpx.get(ctx["base"] + "/v1/account", headers=headers)
    _check(r2.json()["error"]["code"] == "timestamp_out_of_window", r2.text)
    return ("a wrong secret → 401 invalid_signature (sandbox shows string_to_sign); a 400 s old "
            "timestamp → 401 timestamp_out_of_window")


def step_card_payment(ctx: dict[str, Any]) -> str:
    p = ctx["client"].payments.create(amount=2000, currency="JPY", merchant_order_id="ord-1001",
                                      payment_method=_card(CARD_OK), confirm=True)
    _check(p["status"] == "succeeded" and p["amount_received"] == 2000, str(p))
    _check("number" not in p["payment_method"]["card"], "no card number in responses")
    ctx["paid"] = p
    card = p["payment_method"]["card"]
    return f"{p['id']} succeeded: ¥2,000 on {card['brand']} •••• {card['last4']}, fee {p['fee']}"


def step_3ds(ctx: dict[str, Any]) -> str:
    c = ctx["client"]
    p = c.payments.create(amount=5000, currency="JPY", merchant_order_id="ord-1002",
                          payment_method=_card(CARD_3DS), confirm=True)
    _check(p["status"] == "requires_action", str(p["status"]))
    _check(p["next_action"]["type"] == "redirect_to_url", str(p["next_action"]))
    done = c.request("POST", f"/v1/test_helpers/payments/{p['id']}/complete_3ds",
                     json={"outcome": "succeed"})
    _check(done["status"] == "succeeded", done["status"])
    return f"{p['id']}: requires_action (3-D Secure challenge) → shopper passes → succeeded"


def step_decline(ctx: dict[str, Any]) -> str:
    try:
        ctx["client"].payments.create(amount=1000, currency="JPY", merchant_order_id="ord-1003",
                                      payment_method=_card(CARD_DECLINED), confirm=True)
    except ctx["CardError"] as err:
        _check(err.http_status == 402 and err.code == "card_declined", str(err))
        pay = err.payment or {}
        _check(pay.get("status") == "failed", str(pay))
        return f"402 card_error / card_declined; the payment {pay.get('id')} is failed"
    raise AssertionError("the declined card was accepted")


def step_manual_capture(ctx: dict[str, Any]) -> str:
    c = ctx["client"]
    p = c.payments.create(amount=10000, currency="JPY", merchant_order_id="ord-1004",
                          payment_method=_card(CARD_OK), confirm=True, capture_method="manual")
    _check(p["status"] == "requires_capture" and p["amount_capturable"] == 10000, str(p))
    cap = c.payments.capture(p["id"], amount=8000)
    _check(cap["status"] == "succeeded" and cap["amount_received"] == 8000, str(cap))
    return f"{p['id']}: authorized ¥10,000, captured ¥8,000, the rest released"


def step_refund(ctx: dict[str, Any]) -> str:
    c = ctx["client"]
    r = c.refunds.create(payment=ctx["paid"]["id"], amount=500, reason="requested_by_customer")
    _check(r["status"] == "succeeded" and r["amount"] == 500, str(r))
    try:
        c.refunds.create(payment=ctx["paid"]["id"], amount=5000)
    except Exception as err:
        _check(getattr(err, "code", "") == "amount_too_large", str(err))
    else:
        raise AssertionError("refunding more than received was accepted")
    bal = c.balance.retrieve()
    pending = {b["currency"]: b["amount"] for b in bal["pending"]}
    return f"refunded ¥500 of {ctx['paid']['id']}; ¥5,000 more refused; pending balance {pending}"


def step_idempotency(ctx: dict[str, Any]) -> str:
    c = ctx["client"]
    key = "demo-" + uuid.uuid4().hex
    body = {"amount": 1500, "currency": "JPY", "merchant_order_id": "ord-1005",
            "payment_method": _card(CARD_OK), "confirm": True}
    first = c.request("POST", "/v1/payments", json=body, idempotency_key=key)
    second = c.request("POST", "/v1/payments", json=body, idempotency_key=key)
    _check(first["id"] == second["id"], "the retry created another payment")
    _check(c.last_response.idempotent_replayed, "the retry was not marked as replayed")
    return f"the same Idempotency-Key twice → one payment {first['id']}, second answer replayed"


def step_checkout(ctx: dict[str, Any]) -> str:
    import re

    import httpx

    c = ctx["client"]
    cs = c.checkout_sessions.create(
        amount=3980, currency="JPY", merchant_order_id="ord-1006", payment_method_types=["card"],
        success_url="https://shop.example/thanks", cancel_url="https://shop.example/cart")
    _check(cs["status"] == "open" and cs["url"], str(cs))
    with httpx.Client(timeout=30) as browser:
        page = browser.get(cs["url"])
        _check(page.status_code == 200 and "3,980" in page.text, "the hosted page shows the amount")
        fields = dict(re.findall(r'name="(token|nonce)" value="([^"]*)"', page.text))
        form = {**fields, "number": CARD_OK, "exp_month": "12", "exp_year": "2034",
                "cvc": "123", "name": "Hanako Yamada"}
        first = browser.post(cs["url"].split("?")[0], data=form)
        again = browser.post(cs["url"].split("?")[0], data=form)  # a double click
    _check(first.status_code == 303 and "shop.example/thanks" in first.headers["location"],
           f"expected a redirect to success_url, got {first.status_code}")
    done = c.checkout_sessions.retrieve(cs["id"])
    _check(done["status"] == "complete" and done["payment"], str(done))
    paid = c.payments.list(merchant_order_id="ord-1006")["data"]
    succeeded = [p for p in paid if p["status"] == "succeeded"]
    _check(len(succeeded) == 1, f"{len(succeeded)} successful payments for one session")
    return (f"{cs['id']} paid on its hosted page → complete with {done['payment']}; the second "
            f"submit (HTTP {again.status_code}) made no second payment")


def _konbini(ctx: dict[str, Any], order: str, days: int) -> dict[str, Any]:
    p: dict[str, Any] = ctx["client"].payments.create(
        amount=2480, currency="JPY", merchant_order_id=order, confirm=True, customer=SHOPPER,
        payment_method={"type": "konbini", "konbini": {"expires_after_days": days}})
    _check(p["status"] == "requires_action", str(p["status"]))
    _check(p["next_action"]["type"] == "display_voucher", str(p["next_action"]))
    return p


def step_konbini_paid(ctx: dict[str, Any]) -> str:
    c = ctx["client"]
    p = _konbini(ctx, "ord-1007", 3)
    na = p["next_action"]
    paid = c.request("POST", f"/v1/test_helpers/payments/{p['id']}/pay_voucher",
                     json={"store": "lawson"})
    _check(paid["status"] == "succeeded" and paid["amount_received"] == 2480, str(paid))
    return (f"{p['id']}: voucher {na['payment_number']} / {na['confirmation_number']}, payable "
            f"until {na['expires_at']} → paid at Lawson → succeeded, fee {paid['fee']}")


def step_konbini_expired(ctx: dict[str, Any]) -> str:
    c = ctx["client"]
    p = _konbini(ctx, "ord-1008", 1)
    clock = c.request("POST", "/v1/test_helpers/clock/advance", json={"seconds": 3 * 86400})
    deadline = time.monotonic() + EXPIRY_WAIT_S
    got = p
    while time.monotonic() < deadline and got["status"] != "canceled":
        time.sleep(0.1)
        got = c.payments.retrieve(p["id"])
    _check(got["status"] == "canceled" and got["cancellation_reason"] == "expired", str(got))
    time.sleep(0.3)  # the worker keeps running: the event must still be there once
    events = c.request("GET", "/v1/events",
                       params={"type": "payment.canceled", "object_id": p["id"]})["data"]
    _check(len(events) == 1, f"{len(events)} payment.canceled events")
    try:
        c.request("POST", f"/v1/test_helpers/payments/{p['id']}/pay_voucher", json={})
    except Exception as err:
        _check(getattr(err, "code", "") == "payment_expired", str(err))
    else:
        raise AssertionError("a voucher paid after its deadline was accepted")
    return (f"{p['id']}: test clock +3 days (now {clock['now']}) → the worker expired it: "
            f"canceled (expired), one payment.canceled event {events[0]['id']}; paying it late "
            "→ 409 payment_expired, money held for review")


class _Receiver:
    """A merchant's webhook handler: a real HTTP server on 127.0.0.1 that keeps what arrives."""

    def __init__(self) -> None:
        import http.server

        received: list[tuple[dict[str, str], bytes]] = []
        self.received = received

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/webhooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def step_webhook_endpoint(ctx: dict[str, Any]) -> str:
    receiver = _Receiver()
    ctx["receiver"] = receiver
    ep = ctx["client"].webhook_endpoints.create(url=receiver.url, enabled_events=["*"])
    _check(ep["secret"].startswith("whsec_"), "the endpoint secret is shown at creation")
    ctx["webhook_secret"] = ep["secret"]
    return f"{ep['id']} → {receiver.url} (local deliveries allowed in this sandbox)"


def step_webhooks_arrived(ctx: dict[str, Any]) -> str:
    from openpse_sdk.webhooks import verify

    receiver: _Receiver = ctx["receiver"]
    target = ctx["paid"]["id"]
    deadline = time.monotonic() + 20
    seen: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        for headers, body in list(receiver.received):
            event = verify(body, headers, ctx["webhook_secret"])
            _check(headers["webhook-id"] == event["id"], "webhook-id is the event id")
            seen[event["id"]] = event
        succeeded = [e for e in seen.values() if e["type"] == "payment.succeeded"
                     and e["data"]["object"]["id"] == target]
        if succeeded:
            break
        time.sleep(0.2)
    receiver.close()
    _check(bool(seen), "no webhook arrived")
    _check(any(e["type"] == "payment.succeeded" and e["data"]["object"]["id"] == target
               for e in seen.values()), f"payment.succeeded for {target} did not arrive")
    types = sorted({e["type"] for e in seen.values()})
    _check(all(e["object"] == "event" for e in seen.values()), "every delivery is an event")
    return (f"{len(seen)} events delivered and verified (Standard Webhooks signature), "
            f"types: {', '.join(types[:6])}{' ...' if len(types) > 6 else ''}")


def step_ledger(ctx: dict[str, Any]) -> str:
    import asyncio

    from openpse.bootstrap import build_services
    from openpse.storage.ledger_verify import verify_ledger

    async def go() -> Any:
        svc = build_services(ctx["settings"])
        try:
            async with svc.db.read() as conn:
                return await verify_ledger(conn)
        finally:
            await svc.db.dispose()

    rep = asyncio.run(go())
    _check(rep.ok, "; ".join(rep.problems))
    return (f"ledger verify: {rep.journals} journals, {rep.postings} postings, every journal "
            "balances and all accounts sum to zero")


STEPS: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
    ("A signed API call", step_signed_call),
    ("Signing mistakes are explained", step_bad_signature),
    ("A webhook endpoint on a local receiver", step_webhook_endpoint),
    ("A card payment", step_card_payment),
    ("A 3-D Secure payment", step_3ds),
    ("A declined card", step_decline),
    ("A manual capture", step_manual_capture),
    ("A partial refund", step_refund),
    ("An idempotent retry", step_idempotency),
    ("A checkout session paid on its hosted page", step_checkout),
    ("A konbini voucher paid at the store", step_konbini_paid),
    ("A konbini voucher left unpaid expires (test clock + worker)", step_konbini_expired),
    ("Webhooks arrived and their signatures verify", step_webhooks_arrived),
    ("Ledger verification", step_ledger),
]
