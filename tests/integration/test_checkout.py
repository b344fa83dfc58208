"""Checkout sessions and their hosted page over real HTTP (CONTRACT §4 "Checkout sessions"):
the API with its validation, the page (no secrets, never the card back), completion exactly
once under concurrent submits, declines, 3-D Secure through the sandbox challenge page, and
expiry by the worker's job, exactly once even with two workers."""

from __future__ import annotations

import asyncio
import re
import threading
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from sqlalchemy import select

from openpse.storage.tables import payment_attempts, payments, simulator_operations
from tests.conftest import new_merchant
from tests.support.api_asserts import assert_error

VISA = "4242424242424242"
THREE_DS = "4000000000003220"
DECLINED = "4000000000000002"
RISK_BLOCKED = "4100000000000019"
CVC = "987"
CONCURRENT_SUBMITS = 10
_SENSITIVE_INPUT = re.compile(r'<input[^>]*name="(?:number|cvc)"[^>]*>')


def _body(**kw: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "amount": 1000, "currency": "JPY", "merchant_order_id": "ord-cs-1",
        "payment_method_types": ["card", "konbini"],
        "success_url": "https://shop.example/thanks?order=ord-cs-1",
        "cancel_url": "https://shop.example/cart",
    }
    body.update(kw)
    return {k: v for k, v in body.items() if v is not None}


def _create(merchant: Any, **kw: Any) -> dict[str, Any]:
    res = merchant.raw().post("/v1/checkout/sessions", _body(**kw))
    assert res.status_code == 201, res.text
    return dict(res.json())


def _get(merchant: Any, session_id: str) -> dict[str, Any]:
    res = merchant.raw().get(f"/v1/checkout/sessions/{session_id}")
    assert res.status_code == 200, res.text
    return dict(res.json())


def _events(merchant: Any, type_: str, object_id: str) -> list[dict[str, Any]]:
    res = merchant.raw().get(f"/v1/events?type={type_}&object_id={object_id}&limit=100")
    assert res.status_code == 200, res.text
    return list(res.json()["data"])


def _hidden(html: str, name: str) -> str:
    m = re.search(rf'<input type="hidden" name="{name}" value="([^"]*)"', html)
    assert m, f"no hidden {name} in page"
    return m.group(1)


def _form(page_url: str) -> tuple[str, dict[str, str]]:
    """GET the page; returns the form's POST URL and its hidden fields."""
    res = httpx.get(page_url)
    assert res.status_code == 200, res.text
    parts = urlsplit(page_url)
    action = f"{parts.scheme}://{parts.netloc}{parts.path}"
    return action, {"token": _hidden(res.text, "token"), "nonce": _hidden(res.text, "nonce")}


def _card(number: str, name: str = "Hanako Yamada") -> dict[str, str]:
    return {"number": number, "exp_month": "12", "exp_year": "2034", "cvc": CVC, "name": name}


def _submit(page_url: str, number: str, **extra: str) -> httpx.Response:
    action, hidden = _form(page_url)
    return httpx.post(action, data={**hidden, **_card(number), **extra})


def _assert_no_card(res: httpx.Response, number: str) -> None:
    assert number not in res.text
    assert number[:6] + number[-4:] not in res.text
    for tag in _SENSITIVE_INPUT.findall(res.text):
        assert "value=" not in tag, tag
    assert f'value="{CVC}"' not in res.text


async def _session_payments(services: Any, session_id: str) -> list[dict[str, Any]]:
    async with services.db.read() as conn:
        rows = (await conn.execute(select(payments).where(
            payments.c.checkout_session_id == session_id).order_by(payments.c.id))).all()
    return [dict(r._mapping) for r in rows]


async def _acquirer_authorizations(services: Any, session_id: str) -> int:
    """Calls the sandbox acquirer received for the session's payments (its own books)."""
    j = simulator_operations.join(payment_attempts,
                                  payment_attempts.c.id == simulator_operations.c.reference)
    j = j.join(payments, payments.c.id == payment_attempts.c.payment_id)
    async with services.db.read() as conn:
        rows = (await conn.execute(select(simulator_operations.c.reference).select_from(j).where(
            payments.c.checkout_session_id == session_id))).all()
    return len(rows)


# ---- the API --------------------------------------------------------------------------------

def test_create_get_list_expire(server, merchant) -> None:
    raw = merchant.raw()
    cs = _create(merchant, locale="ja", customer={"email": "h@example.jp", "name": "Hanako"},
                 metadata={"cart": "c-1"}, expires_in_seconds=3600)
    assert cs["id"].startswith("cs_") and cs["object"] == "checkout_session"
    assert cs["status"] == "open" and cs["livemode"] is False and cs["version"] == 1
    assert cs["amount"] == 1000 and cs["currency"] == "JPY"
    assert cs["payment_method_types"] == ["card", "konbini"]
    assert cs["locale"] == "ja" and cs["customer"] == {"email": "h@example.jp", "name": "Hanako"}
    assert cs["metadata"] == {"cart": "c-1"} and cs["payment"] is None
    assert cs["completed_at"] is None and cs["created"].endswith("Z")
    url = urlsplit(cs["url"])
    assert f"{url.scheme}://{url.netloc}" == server.base_url
    assert url.path == f"/pay/{cs['id']}" and len(parse_qs(url.query)["token"][0]) >= 32
    assert _get(merchant, cs["id"]) == cs

    other = _create(merchant, merchant_order_id="ord-cs-2")
    listed = raw.get("/v1/checkout/sessions?limit=1")
    assert listed.status_code == 200, listed.text
    page = listed.json()
    assert page["object"] == "list" and page["has_more"] is True
    assert [s["id"] for s in page["data"]] == [other["id"]]
    nxt = raw.get(f"/v1/checkout/sessions?limit=1&cursor={page['next_cursor']}").json()
    assert [s["id"] for s in nxt["data"]] == [cs["id"]]
    by_order = raw.get("/v1/checkout/sessions?merchant_order_id=ord-cs-2").json()
    assert [s["id"] for s in by_order["data"]] == [other["id"]]

    res = raw.post(f"/v1/checkout/sessions/{cs['id']}/expire")
    assert res.status_code == 200, res.text
    expired = res.json()
    assert expired["status"] == "expired" and expired["url"] is None
    assert expired["version"] == cs["version"] + 1
    assert [s["id"] for s in raw.get("/v1/checkout/sessions?status=expired").json()["data"]] \
        == [cs["id"]]
    assert [s["id"] for s in raw.get("/v1/checkout/sessions?status=open").json()["data"]] \
        == [other["id"]]
    evs = _events(merchant, "checkout.session.expired", cs["id"])
    assert len(evs) == 1
    assert evs[0]["data"]["object"]["status"] == "expired"
    assert evs[0]["data"]["previous_attributes"]["status"] == "open"
    assert_error(raw.post(f"/v1/checkout/sessions/{cs['id']}/expire"), 409,
                 "invalid_request_error", "session_invalid_state")
    assert len(_events(merchant, "checkout.session.expired", cs["id"])) == 1

    page_res = httpx.get(cs["url"])  # the page of an expired session explains itself
    assert page_res.status_code == 200 and 'lang="ja"' in page_res.text
    assert "期限切れ" in page_res.text and 'name="number"' not in page_res.text


@pytest.mark.parametrize(("change", "status", "code", "param"), [
    ({"amount": 10.5}, 400, "invalid_amount", "amount"),
    ({"amount": "1000"}, 400, "invalid_amount", "amount"),
    ({"amount": 0}, 400, "amount_out_of_range", "amount"),
    ({"currency": "jpy"}, 400, "invalid_currency", "currency"),
    ({"currency": "XXX"}, 400, "invalid_currency", "currency"),
    ({"payment_method_types": []}, 400, "parameter_invalid", "payment_method_types"),
    ({"payment_method_types": ["card", "paypal"]}, 400, "parameter_invalid",
     "payment_method_types[1]"),
    ({"payment_method_types": ["card", "card"]}, 400, "parameter_invalid",
     "payment_method_types[1]"),
    ({"success_url": "/thanks"}, 400, "parameter_invalid", "success_url"),
    ({"cancel_url": "javascript:alert(1)"}, 400, "parameter_invalid", "cancel_url"),
    ({"cancel_url": "ftp://shop.example/"}, 400, "parameter_invalid", "cancel_url"),
    ({"success_url": None}, 400, "parameter_missing", "success_url"),
    ({"merchant_order_id": None}, 400, "parameter_missing", "merchant_order_id"),
    ({"locale": "fr"}, 400, "parameter_invalid", "locale"),
    ({"expires_in_seconds": 1799}, 400, "parameter_invalid", "expires_in_seconds"),
    ({"expires_in_seconds": 7 * 86400 + 1}, 400, "parameter_invalid", "expires_in_seconds"),
    ({"expires_in_seconds": 3600.0}, 400, "parameter_invalid", "expires_in_seconds"),
    ({"metadata": {f"k{i}": "v" for i in range(51)}}, 400, "parameter_invalid", "metadata"),
    ({"metadata": {"k": 1}}, 400, "parameter_invalid", "metadata[k]"),
    ({"customer": {"email": "a@b.c", "age": 3}}, 400, "parameter_unknown", "customer[age]"),
    ({"status": "complete"}, 400, "parameter_unknown", "status"),
])
def test_create_validation_writes_nothing(merchant, change: dict[str, Any], status: int,
                                          code: str, param: str) -> None:
    raw = merchant.raw()
    res = raw.post("/v1/checkout/sessions", _body(**change))
    assert_error(res, status, "invalid_request_error", code, param=param)
    assert raw.get("/v1/checkout/sessions").json()["data"] == []


async def test_expiry_bounds_and_scoping(services, server, merchant) -> None:
    cs = _create(merchant, expires_in_seconds=1800)
    assert _seconds(cs["expires_at"]) - _seconds(cs["created"]) == 1800
    cs = _create(merchant)
    assert _seconds(cs["expires_at"]) - _seconds(cs["created"]) == 86400
    raw = merchant.raw()
    assert_error(raw.get("/v1/checkout/sessions?status=done"), 400, "invalid_request_error",
                 "parameter_invalid", param="status")
    assert_error(raw.get("/v1/checkout/sessions/cs_nope"), 404, "invalid_request_error",
                 "resource_missing")
    other = await new_merchant(services, server.base_url)
    assert_error(other.raw().get(f"/v1/checkout/sessions/{cs['id']}"), 404,
                 "invalid_request_error", "resource_missing")
    assert_error(other.raw().post(f"/v1/checkout/sessions/{cs['id']}/expire"), 404,
                 "invalid_request_error", "resource_missing")


def _seconds(ts: str) -> int:
    from datetime import datetime

    return int(datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp())


# ---- the hosted page ------------------------------------------------------------------------

def test_page_renders_amount_and_no_secrets(merchant) -> None:
    cs = _create(merchant, amount=123456, currency="USD", merchant_order_id="注文 #42")
    res = httpx.get(cs["url"])
    assert res.status_code == 200, res.text
    assert res.headers["content-type"].startswith("text/html")
    html = res.text
    assert 'lang="en"' in html and "1,234.56 USD" in html and "注文 #42" in html
    for field in ("number", "exp_month", "exp_year", "cvc", "name"):
        assert f'<label for="{field}">' in html and f'id="{field}"' in html
    assert merchant.secret not in html and merchant.access_key not in html
    assert res.headers["cache-control"] == "no-store"
    assert res.headers["referrer-policy"] == "no-referrer"
    assert "frame-ancestors 'none'" in res.headers["content-security-policy"]
    # A merchant-chosen text is escaped, never markup.
    cs2 = _create(merchant, merchant_order_id="<script>alert(1)</script>")
    html2 = httpx.get(cs2["url"]).text
    assert "<script>alert(1)" not in html2 and "&lt;script&gt;alert(1)" in html2

    ja = httpx.get(_create(merchant, locale="ja")["url"]).text
    assert 'lang="ja"' in ja and "カード番号" in ja and "1,000 JPY" in ja
    auto = httpx.get(_create(merchant, locale="auto")["url"],
                     headers={"Accept-Language": "ja-JP,ja;q=0.9,en;q=0.8"}).text
    assert 'lang="ja"' in auto


def test_page_wrong_or_missing_token_is_404(merchant) -> None:
    cs = _create(merchant)
    base = cs["url"].split("?")[0]
    for url in (base, base + "?token=", base + "?token=" + "0" * 64,
                base.replace(cs["id"], "cs_00000000000000000000000000") + "?token=x"):
        res = httpx.get(url)
        assert res.status_code == 404, url
        assert res.headers["content-type"].startswith("text/html")
    action, hidden = _form(cs["url"])
    res = httpx.post(action, data={**hidden, "token": "0" * 64, **_card(VISA)})
    assert res.status_code == 404
    _assert_no_card(res, VISA)


async def test_good_card_completes_session_once(services, merchant) -> None:
    cs = _create(merchant)
    action, hidden = _form(cs["url"])
    res = httpx.post(action, data={**hidden, **_card(VISA)})
    assert res.status_code == 303, res.text
    assert res.headers["location"] == \
        f"https://shop.example/thanks?order=ord-cs-1&session_id={cs['id']}"
    done = _get(merchant, cs["id"])
    assert done["status"] == "complete" and done["url"] is None
    assert done["payment"].startswith("pay_") and done["completed_at"] is not None
    pay = merchant.raw().get(f"/v1/payments/{done['payment']}").json()
    assert pay["status"] == "succeeded" and pay["amount"] == 1000 and pay["currency"] == "JPY"
    assert pay["checkout_session"] == cs["id"] and pay["merchant_order_id"] == "ord-cs-1"
    assert pay["payment_method"]["card"]["last4"] == "4242"
    evs = _events(merchant, "checkout.session.completed", cs["id"])
    assert len(evs) == 1
    assert evs[0]["data"]["object"]["payment"] == done["payment"]
    assert evs[0]["data"]["previous_attributes"]["status"] == "open"
    assert evs[0]["data"]["object"]["version"] == done["version"]

    # The page now explains; the same form posted again (back button, resubmit) pays nothing.
    again = httpx.get(cs["url"])
    assert again.status_code == 200 and 'name="number"' not in again.text
    assert f"session_id={cs['id']}" in again.text
    resubmit = httpx.post(action, data={**hidden, **_card(VISA)})
    assert resubmit.status_code == 200 and 'name="number"' not in resubmit.text
    _assert_no_card(resubmit, VISA)
    assert [p["id"] for p in await _session_payments(services, cs["id"])] == [done["payment"]]
    assert len(_events(merchant, "checkout.session.completed", cs["id"])) == 1


async def test_concurrent_submits_make_one_payment(services, merchant) -> None:
    cs = _create(merchant)
    action, hidden = _form(cs["url"])
    barrier = threading.Barrier(CONCURRENT_SUBMITS)
    results: list[httpx.Response] = []
    lock = threading.Lock()

    def submit() -> None:
        with httpx.Client(timeout=60) as client:
            barrier.wait()
            r = client.post(action, data={**hidden, **_card(VISA)})
        with lock:
            results.append(r)

    threads = [threading.Thread(target=submit) for _ in range(CONCURRENT_SUBMITS)]
    await asyncio.to_thread(lambda: ([t.start() for t in threads], [t.join() for t in threads]))
    assert len(results) == CONCURRENT_SUBMITS
    statuses = sorted(r.status_code for r in results)
    assert statuses == [200] * (CONCURRENT_SUBMITS - 1) + [303], statuses
    for r in results:
        _assert_no_card(r, VISA)
    rows = await _session_payments(services, cs["id"])
    succeeded = [p for p in rows if p["status"] == "succeeded"]
    assert len(succeeded) == 1, [p["status"] for p in rows]
    assert {p["status"] for p in rows} <= {"succeeded", "canceled"}
    assert all(p["cancellation_reason"] == "duplicate" for p in rows if p["status"] == "canceled")
    assert await _acquirer_authorizations(services, cs["id"]) == 1
    done = _get(merchant, cs["id"])
    assert done["status"] == "complete" and done["payment"] == succeeded[0]["id"]
    assert len(_events(merchant, "checkout.session.completed", cs["id"])) == 1


async def test_decline_then_good_card(services, merchant) -> None:
    cs = _create(merchant, locale="en")
    res = _submit(cs["url"], DECLINED)
    assert res.status_code == 402, res.text
    assert "The card was declined by the issuer." in res.text and 'role="alert"' in res.text
    assert 'value="Hanako Yamada"' in res.text  # the name is kept, nothing else
    _assert_no_card(res, DECLINED)
    assert _get(merchant, cs["id"])["status"] == "open"
    shown = httpx.get(cs["url"])  # reloading shows what happened, and the form
    assert "did not go through" in shown.text and 'name="number"' in shown.text

    bad = _submit(cs["url"], "4242424242424241")  # fails Luhn: never reaches the acquirer
    assert bad.status_code == 400 and "card number is not valid" in bad.text
    _assert_no_card(bad, "4242424242424241")
    expired_form = httpx.post(cs["url"].split("?")[0], data={
        "token": parse_qs(urlsplit(cs["url"]).query)["token"][0], "nonce": "forged",
        **_card(VISA)})
    assert expired_form.status_code == 400 and "out of date" in expired_form.text

    ok = _submit(cs["url"], VISA)
    assert ok.status_code == 303, ok.text
    rows = await _session_payments(services, cs["id"])
    assert [p["status"] for p in rows] == ["failed", "succeeded"]
    assert rows[0]["failure_code"] == "card_declined"
    done = _get(merchant, cs["id"])
    assert done["status"] == "complete" and done["payment"] == rows[1]["id"]


async def test_a_run_of_declines_stops_cards_on_that_page(services, merchant) -> None:
    """Card testing through one payment link: after MAX_CARD_DECLINES failed card payments
    (declines and risk blocks alike) the page takes no more cards, says why, and raises one
    review item; its other methods stay, and nothing else about the session changes."""
    from openpse.services.checkout import MAX_CARD_DECLINES
    from openpse.storage.tables import review_items

    cs = _create(merchant, locale="en")
    other = _create(merchant, locale="en", merchant_order_id="ord-cs-2")
    cards = [DECLINED] * (MAX_CARD_DECLINES - 1) + [RISK_BLOCKED]
    for i, number in enumerate(cards):
        res = _submit(cs["url"], number)
        assert res.status_code == 402, (i, res.text)
        _assert_no_card(res, number)
        assert ('name="number"' in res.text) == (i < MAX_CARD_DECLINES - 1), i
    assert [p["status"] for p in await _session_payments(services, cs["id"])] == \
        ["failed"] * MAX_CARD_DECLINES
    assert await _acquirer_authorizations(services, cs["id"]) == MAX_CARD_DECLINES - 1

    refused = _submit(cs["url"], VISA)  # a good card now: refused before any payment
    assert refused.status_code == 429, refused.text
    assert "takes no more cards" in refused.text and 'name="number"' not in refused.text
    _assert_no_card(refused, VISA)
    assert len(await _session_payments(services, cs["id"])) == MAX_CARD_DECLINES
    shown = httpx.get(cs["url"])
    assert shown.status_code == 200 and "takes no more cards" in shown.text
    assert 'name="number"' not in shown.text and 'id="konbini-phone"' in shown.text
    assert _get(merchant, cs["id"])["status"] == "open"

    async with services.db.read() as conn:
        reviews = (await conn.execute(select(review_items).where(
            review_items.c.object_id == cs["id"]))).all()
    assert [r.kind for r in reviews] == ["checkout_card_declines_exhausted"]
    assert reviews[0].details["card_declines"] == MAX_CARD_DECLINES

    voucher = httpx.post(cs["url"].split("?")[0], data={
        **_form(cs["url"])[1], "method": "konbini", "name": "Hanako Yamada",
        "email": "hanako@example.jp", "phone": "090-1234-5678"})
    assert voucher.status_code == 303, voucher.text
    assert (await _session_payments(services, cs["id"]))[-1]["payment_method_type"] == "konbini"

    assert _submit(other["url"], VISA).status_code == 303  # another session is not affected


async def test_three_d_secure_through_challenge_page(services, merchant) -> None:
    cs = _create(merchant)
    action, hidden = _form(cs["url"])
    res = httpx.post(action, data={**hidden, **_card(THREE_DS)})
    assert res.status_code == 303, res.text
    challenge_url = res.headers["location"]
    parts = urlsplit(challenge_url)
    assert parts.path.startswith("/sandbox/3ds/pay_")
    payment_id = parts.path.rsplit("/", 1)[1]
    assert merchant.raw().get(f"/v1/payments/{payment_id}").json()["status"] == "requires_action"

    # A second submit while the shopper authenticates starts nothing: it points to the challenge.
    shown = httpx.get(cs["url"])
    assert shown.status_code == 200 and 'name="number"' not in shown.text
    dup = httpx.post(action, data={**hidden, **_card(VISA)})
    assert dup.status_code == 200 and challenge_url.split("?")[0] in dup.text
    _assert_no_card(dup, VISA)
    assert len(await _session_payments(services, cs["id"])) == 1

    assert httpx.get(challenge_url.split("?")[0] + "?token=wrong").status_code == 404
    page = httpx.get(challenge_url)
    assert page.status_code == 200
    assert "Complete authentication" in page.text and "Fail authentication" in page.text
    assert "1,000 JPY" in page.text
    token = parse_qs(parts.query)["token"][0]
    action = f"{parts.scheme}://{parts.netloc}{parts.path}"
    assert httpx.post(action, data={"token": "bad", "outcome": "succeed"}).status_code == 404
    back = httpx.post(action, data={"token": token, "outcome": "succeed"})
    assert back.status_code == 303
    assert back.headers["location"] == cs["url"]
    landing = httpx.get(back.headers["location"])
    assert landing.status_code == 200 and "Payment received" in landing.text
    done = _get(merchant, cs["id"])
    assert done["status"] == "complete" and done["payment"] == payment_id
    assert merchant.raw().get(f"/v1/payments/{payment_id}").json()["status"] == "succeeded"
    assert len(_events(merchant, "checkout.session.completed", cs["id"])) == 1
    # A second click on the challenge changes nothing.
    assert httpx.post(action, data={"token": token, "outcome": "fail"}).status_code == 303
    assert _get(merchant, cs["id"]) == done


async def test_three_d_secure_failure_lets_the_shopper_retry(services, merchant) -> None:
    cs = _create(merchant)
    challenge = urlsplit(_submit(cs["url"], THREE_DS).headers["location"])
    token = parse_qs(challenge.query)["token"][0]
    back = httpx.post(f"{challenge.scheme}://{challenge.netloc}{challenge.path}",
                      data={"token": token, "outcome": "fail"})
    assert back.status_code == 303
    retry_page = httpx.get(back.headers["location"])
    assert "authentication" in retry_page.text and 'name="number"' in retry_page.text
    assert _submit(cs["url"], VISA).status_code == 303
    rows = await _session_payments(services, cs["id"])
    assert [p["status"] for p in rows] == ["failed", "succeeded"]
    assert _get(merchant, cs["id"])["status"] == "complete"


async def test_challenge_page_is_sandbox_only(services, server) -> None:
    live = await new_merchant(services, server.base_url, livemode=True)
    res = live.raw().post("/v1/payments", {
        "amount": 1000, "currency": "JPY", "merchant_order_id": "live-3ds", "confirm": True,
        "payment_method": {"type": "card", "card": {"number": THREE_DS, "exp_month": 12,
                                                    "exp_year": 2034, "cvc": CVC}}})
    if res.status_code != 200 and res.status_code != 201:
        pytest.skip(f"live card payments are not available in this build: {res.text[:200]}")
    url = (res.json().get("next_action") or {}).get("url")
    if not url:
        pytest.skip("the live acquirer asked for no challenge")
    assert httpx.get(url).status_code == 404


# ---- expiry by the worker's job -------------------------------------------------------------

async def test_expiry_job_runs_once_with_two_workers(services, test_settings, merchant) -> None:
    from openpse.bootstrap import build_services
    from openpse.services.checkout import expire_due_sessions

    cs = _create(merchant, expires_in_seconds=1800)
    pending = _create(merchant, expires_in_seconds=1800, merchant_order_id="ord-3ds")
    challenge = _submit(pending["url"], THREE_DS)  # left waiting for 3-D Secure
    assert challenge.status_code == 303
    keeps = _create(merchant, expires_in_seconds=7200)
    due = _seconds(pending["expires_at"])
    await expire_due_sessions(services, _seconds(cs["expires_at"]) - 1)
    assert _get(merchant, cs["id"])["status"] == "open"

    second = build_services(test_settings)  # another worker: its own engine and writer
    try:
        await asyncio.gather(expire_due_sessions(services, due), expire_due_sessions(second, due),
                             expire_due_sessions(services, due))
        await expire_due_sessions(second, due)
    finally:
        await second.db.dispose()
    for session in (cs, pending):
        got = _get(merchant, session["id"])
        assert got["status"] == "expired" and got["url"] is None
        assert got["version"] == session["version"] + (1 if session is cs else 2)
        evs = _events(merchant, "checkout.session.expired", session["id"])
        assert len(evs) == 1, evs
        assert evs[0]["request"] is None
    assert _get(merchant, keeps["id"])["status"] == "open"
    # The payment still waiting for the shopper is canceled: it can no longer succeed.
    [pay] = await _session_payments(services, pending["id"])
    assert pay["status"] == "canceled" and pay["cancellation_reason"] == "abandoned"
    page = httpx.get(challenge.headers["location"])
    assert page.status_code == 200 and "Complete authentication" not in page.text
    expired_page = httpx.get(cs["url"])
    assert "expired" in expired_page.text and 'name="number"' not in expired_page.text
    assert _submit_expired(cs["url"]).status_code == 200
    assert await _session_payments(services, cs["id"]) == []


def _submit_expired(page_url: str) -> httpx.Response:
    """A tab left open past expiry: the form still posts, and is refused with an explanation."""
    parts = urlsplit(page_url)
    token = parse_qs(parts.query)["token"][0]
    return httpx.post(f"{parts.scheme}://{parts.netloc}{parts.path}",
                      data={"token": token, "nonce": "x", **_card(VISA)})


def test_a_session_retried_with_its_key_replays_and_is_made_once(merchant) -> None:
    """The route's claim is written in the session's own transaction: the same key replays
    the same bytes (a success and a refusal alike) and one session exists."""
    import uuid

    raw = merchant.raw()
    key = {"Idempotency-Key": str(uuid.uuid4())}
    body = _body(merchant_order_id="ord-cs-replay")
    first = raw.post("/v1/checkout/sessions", body, headers=key)
    assert first.status_code == 201, first.text
    again = raw.post("/v1/checkout/sessions", body, headers=key)
    assert again.status_code == 201 and again.content == first.content
    assert again.headers["idempotent-replayed"] == "true"
    bad_key = {"Idempotency-Key": str(uuid.uuid4())}
    refused = raw.post("/v1/checkout/sessions", _body(currency="XXX"), headers=bad_key)
    assert refused.status_code == 400
    refused_again = raw.post("/v1/checkout/sessions", _body(currency="XXX"), headers=bad_key)
    assert refused_again.content == refused.content
    assert refused_again.headers["idempotent-replayed"] == "true"
    listed = raw.get("/v1/checkout/sessions").json()["data"]
    assert [s["id"] for s in listed] == [first.json()["id"]]


async def test_a_sessions_answer_is_stored_with_its_key_in_its_transaction(services) -> None:
    """A process that dies after the session committed, before sending its 201, leaves a key
    that replays that 201 (and records the session for a resumed retry)."""
    import uuid

    import orjson

    from openpse.api.errors import JSON_CONTENT_TYPE
    from openpse.api.idempotency import Replay
    from openpse.services import checkout as svc_checkout
    from tests.support.answers import answering_caller

    kit = await new_merchant(services, "http://127.0.0.1:9")
    key = f"cs-{uuid.uuid4().hex}"
    caller, got, store = await answering_caller(services, kit.merchant_id, key,
                                                "/v1/checkout/sessions")
    view = await svc_checkout.create_session(services, caller, _body())
    assert got.stored == (201, {"content-type": JSON_CONTENT_TYPE}, orjson.dumps(view))
    replay = await store.begin(merchant_id=kit.merchant_id, livemode=False, key=key,
                               method="POST", path="/v1/checkout/sessions",
                               req_hash="h-" + key, now=services.now())
    assert isinstance(replay, Replay) and (replay.status, replay.body) == (
        201, orjson.dumps(view))


def test_session_completed_event_follows_its_payments_events(merchant) -> None:
    """A consumer reading events in order (ids sort by creation; the list is newest first)
    sees the payment succeed before its session completes."""
    cs = _create(merchant)
    action, hidden = _form(cs["url"])
    assert httpx.post(action, data={**hidden, **_card(VISA)}).status_code == 303
    pay_id = _get(merchant, cs["id"])["payment"]
    mine = []
    for object_id in (pay_id, cs["id"]):
        res = merchant.raw().get(f"/v1/events?object_id={object_id}&limit=100")
        assert res.status_code == 200, res.text
        page = res.json()["data"]
        assert [e["id"] for e in page] == sorted((e["id"] for e in page), reverse=True)
        mine += page
    types = [e["type"] for e in sorted(mine, key=lambda e: e["id"])]
    assert types.index("payment.succeeded") < types.index("checkout.session.completed"), types
