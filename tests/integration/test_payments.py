"""Card payments through the live server (CONTRACT §4 Payments, §6 test cards, §8): every test
card, validation that writes nothing, manual capture, cancel, illegal transitions, and the
events and journals every change leaves behind."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from sqlalchemy import select

from openpse.domain.errors import Conflict
from openpse.services import payments as svc_payments
from openpse.services.context import Caller
from openpse.storage.tables import review_items
from tests.support.api_asserts import assert_error
from tests.support.ledger import (
    DECLINED,
    DISPUTE,
    EXPIRED,
    FRAUD,
    INCORRECT_CVC,
    INSUFFICIENT,
    JCB,
    MASTERCARD,
    PROCESSING_ERROR,
    THREE_DS,
    VISA,
    acquirer_operations,
    count_payments,
    journals_for,
    ledger_problems,
    merchant_balances,
    payment_body,
    payment_events,
)


def _create(raw: Any, number: str = VISA, **kw: Any) -> Any:
    return raw.post("/v1/payments", payment_body(number, **kw))


def _no_pan(res: Any, number: str) -> None:
    assert number not in res.text
    assert number[:6] + number[-4:] not in res.text.replace("*", "")


@pytest.mark.parametrize(("number", "brand"), [(VISA, "visa"), (MASTERCARD, "mastercard"),
                                               (JCB, "jcb"), (DISPUTE, "visa")])
async def test_success_cards(merchant, services, number: str, brand: str) -> None:
    raw = merchant.raw()
    res = _create(raw, number, amount=1000, currency="USD")
    assert res.status_code == 201, res.text
    p = res.json()
    assert p["object"] == "payment" and p["id"].startswith("pay_")
    assert p["status"] == "succeeded"
    assert p["amount_received"] == 1000 and p["amount_capturable"] == 0
    assert p["amount_refunded"] == 0 and p["fee"] == 59 and p["livemode"] is False
    card = p["payment_method"]["card"]
    assert card["brand"] == brand and card["last4"] == number[-4:]
    assert card["exp_month"] == 12 and card["exp_year"] == 2034
    assert len(card["fingerprint"]) >= 16
    assert set(card) <= {"brand", "last4", "exp_month", "exp_year", "fingerprint", "country"}
    assert p["payment_method"]["id"].startswith("pm_")
    _no_pan(res, number)
    assert "\"cvc\"" not in res.text  # no CVC key echoed (ids may hold the letters cvc)
    got = raw.get(f"/v1/payments/{p['id']}")
    assert got.status_code == 200 and got.json() == p
    ops = await acquirer_operations(services, p["id"])
    assert [(o["operation"], o["amount"]) for o in ops] == [("sale", 1000)]
    jnl = await journals_for(services, p["id"])
    assert [j["kind"] for j in jnl] == ["capture"]
    evs = await payment_events(services, p["id"])
    types = [e["type"] for e in evs]
    assert types[0] == "payment.created" and types[-1] == "payment.succeeded"
    assert evs[-1]["data"]["previous_attributes"]["status"] == "processing"
    assert evs[-1]["data"]["object"]["version"] == p["version"]


@pytest.mark.parametrize(("number", "code"), [
    (DECLINED, "card_declined"), (INSUFFICIENT, "insufficient_funds"), (EXPIRED, "expired_card"),
    (INCORRECT_CVC, "incorrect_cvc"), (PROCESSING_ERROR, "processing_error"),
    (FRAUD, "fraudulent"),
])
async def test_declines(merchant, services, number: str, code: str) -> None:
    raw = merchant.raw()
    res = _create(raw, number, order=f"decl-{code}")
    err = assert_error(res, 402, "card_error", code)
    pay = err["payment"]
    assert pay["status"] == "failed" and pay["failure_code"] == code
    assert isinstance(pay["failure_message"], str) and pay["failure_message"]
    assert pay["amount_received"] == 0 and pay["amount_capturable"] == 0
    _no_pan(res, number)
    got = raw.get(f"/v1/payments/{pay['id']}")
    assert got.status_code == 200 and got.json() == pay
    ops = await acquirer_operations(services, pay["id"])
    # a risk block never reaches the acquirer; the others are asked exactly once
    assert len(ops) == (0 if code == "fraudulent" else 1)
    assert await journals_for(services, pay["id"]) == []
    evs = await payment_events(services, pay["id"])
    assert evs[-1]["type"] == "payment.failed"
    assert evs[-1]["data"]["object"]["failure_code"] == code
    assert evs[-1]["data"]["previous_attributes"]["failure_code"] is None
    listed = raw.get(f"/v1/payments?merchant_order_id=decl-{code}").json()["data"]
    assert [p["id"] for p in listed] == [pay["id"]]


@pytest.mark.parametrize(("number", "path"), [
    (VISA, [("payment.created", "requires_confirmation"), ("payment.processing", "processing"),
            ("payment.succeeded", "succeeded")]),
    (FRAUD, [("payment.created", "requires_confirmation"), ("payment.failed", "failed")]),
])
async def test_create_and_confirm_leaves_the_history_of_a_create_then_a_confirm(
        merchant, services, number: str, path: list[tuple[str, str]]) -> None:
    """A create+confirm inserts its payment once, already confirmed (the create's writes are
    held back for the confirmation's), yet its events tell each step, one version apart, as
    a create followed by a confirm would: the stored row is the last event's object."""
    raw = merchant.raw()
    res = _create(raw, number)
    pay = res.json() if res.status_code == 201 else res.json()["error"]["payment"]
    evs = await payment_events(services, pay["id"])
    assert [(e["type"], e["data"]["object"]["status"]) for e in evs] == path
    assert [e["data"]["object"]["version"] for e in evs] == list(range(1, len(path) + 1))
    assert evs[0]["data"]["previous_attributes"] == {}
    for before, after in itertools.pairwise(evs):
        assert after["data"]["previous_attributes"]["status"] == before["data"]["object"][
            "status"]
    assert [e["id"] for e in evs] == sorted(e["id"] for e in evs)
    assert pay["version"] == len(path)
    assert raw.get(f"/v1/payments/{pay['id']}").json() == evs[-1]["data"]["object"]


@pytest.mark.parametrize("outcome", ["succeed", "fail"])
async def test_three_d_secure(merchant, services, outcome: str) -> None:
    raw = merchant.raw()
    res = _create(raw, THREE_DS, return_url="https://shop.example/back")
    assert res.status_code == 201, res.text
    p = res.json()
    assert p["status"] == "requires_action"
    assert p["next_action"]["type"] == "redirect_to_url"
    assert p["next_action"]["url"].startswith("http")
    assert p["amount_received"] == 0
    done = raw.post(f"/v1/test_helpers/payments/{p['id']}/complete_3ds", {"outcome": outcome})
    if outcome == "succeed":
        assert done.status_code == 200, done.text
        final = done.json()
        assert final["status"] == "succeeded" and final["amount_received"] == 1000
        assert final["next_action"] is None
        assert [j["kind"] for j in await journals_for(services, p["id"])] == ["capture"]
    else:
        err = assert_error(done, 402, "card_error", "authentication_failed")
        final = err["payment"]
        assert final["status"] == "failed" and final["failure_code"] == "authentication_failed"
        assert await journals_for(services, p["id"]) == []
    assert raw.get(f"/v1/payments/{p['id']}").json() == final
    assert final["version"] > p["version"]
    types = [e["type"] for e in await payment_events(services, p["id"])]
    assert "payment.requires_action" in types
    assert types[-1] == ("payment.succeeded" if outcome == "succeed" else "payment.failed")
    again = raw.post(f"/v1/test_helpers/payments/{p['id']}/complete_3ds", {"outcome": "succeed"})
    assert_error(again, 409, "invalid_request_error", "payment_invalid_state")


async def test_validation_writes_nothing(merchant, services):
    raw = merchant.raw()
    before = await count_payments(services, merchant.merchant_id)
    bad_luhn = _create(raw, "4242424242424241")
    assert_error(bad_luhn, 400, "invalid_request_error", "invalid_number",
                 param="payment_method[card][number]")
    assert "4242424242424241" not in bad_luhn.text
    body = payment_body(VISA)
    body["amount"] = 10.5
    assert_error(raw.post("/v1/payments", body), 400, "invalid_request_error", "invalid_amount",
                 param="amount")
    body["amount"] = 1000.0
    assert_error(raw.post("/v1/payments", body), 400, "invalid_request_error", "invalid_amount",
                 param="amount")
    for field, value in [("status", "succeeded"), ("livemode", True), ("amount_refunded", 0),
                         ("fee", 0), ("merchant_id", merchant.merchant_id),
                         ("amount_received", 1000)]:
        res = raw.post("/v1/payments", {**payment_body(VISA), field: value})
        assert_error(res, 400, "invalid_request_error", "parameter_unknown", param=field)
    res = raw.post("/v1/payments", payment_body(VISA, confirm=False) | {
        "payment_method": {"type": "card", "card": {"number": VISA, "exp_month": 12,
                                                    "exp_year": 2034, "cvc": "123",
                                                    "brand": "amex"}}})
    assert_error(res, 400, "invalid_request_error", "parameter_unknown",
                 param="payment_method[card][brand]")
    assert await count_payments(services, merchant.merchant_id) == before
    assert raw.get("/v1/payments").json()["data"] == []


async def test_manual_capture_partial(merchant, services):
    raw = merchant.raw()
    res = _create(raw, VISA, amount=1000, capture_method="manual")
    assert res.status_code == 201, res.text
    p = res.json()
    assert p["status"] == "requires_capture"
    assert p["amount_capturable"] == 1000 and p["amount_received"] == 0
    bal = await merchant_balances(services, merchant.merchant_id)
    assert bal[("card_authorizations", "USD")] == 1000
    too_much = raw.post(f"/v1/payments/{p['id']}/capture", {"amount": 1001})
    assert_error(too_much, 400, "invalid_request_error", "amount_too_large", param="amount")
    assert raw.get(f"/v1/payments/{p['id']}").json() == p  # nothing changed
    cap = raw.post(f"/v1/payments/{p['id']}/capture", {"amount": 600})
    assert cap.status_code == 200, cap.text
    c = cap.json()
    assert c["status"] == "succeeded"
    assert c["amount_received"] == 600 and c["amount_capturable"] == 0
    assert c["fee"] == 17 + 30  # 2.9 % of 600 rounds to 17
    bal = await merchant_balances(services, merchant.merchant_id)
    assert bal[("card_authorizations", "USD")] == 0 and bal[("authorization_holds", "USD")] == 0
    assert bal[("acquirer_receivable", "USD")] == 600
    assert bal[("merchant_pending", "USD")] == -(600 - 47)
    kinds = [j["kind"] for j in await journals_for(services, p["id"])]
    assert kinds == ["authorization", "capture"]
    ops = sorted((o["operation"], o["amount"]) for o in await acquirer_operations(services,
                                                                                  p["id"]))
    assert ops == [("authorize", 1000), ("capture", 600)]
    evs = await payment_events(services, p["id"])
    assert [e["type"] for e in evs] == ["payment.created", "payment.processing",
                                       "payment.authorized", "payment.succeeded"]
    versions = [e["data"]["object"]["version"] for e in evs]
    assert versions == sorted(versions) and len(set(versions)) == len(versions)
    assert evs[0]["data"]["object"]["version"] == 1
    auth = evs[2]["data"]
    assert auth["previous_attributes"]["status"] == "processing"
    assert auth["previous_attributes"]["amount_capturable"] == 0
    last = evs[-1]["data"]
    assert last["previous_attributes"]["amount_received"] == 0
    assert last["object"] == c
    assert not await ledger_problems(services)
    # a second capture or a cancel of the captured payment changes nothing
    v = c["version"]
    assert_error(raw.post(f"/v1/payments/{p['id']}/capture", {}), 409, "invalid_request_error",
                 "payment_invalid_state")
    assert_error(raw.post(f"/v1/payments/{p['id']}/cancel", {}), 409, "invalid_request_error",
                 "payment_invalid_state")
    assert raw.get(f"/v1/payments/{p['id']}").json()["version"] == v


async def test_cancel_authorized_releases_the_hold(merchant, services):
    raw = merchant.raw()
    p = _create(raw, MASTERCARD, amount=2500, currency="EUR", capture_method="manual").json()
    assert p["status"] == "requires_capture"
    res = raw.post(f"/v1/payments/{p['id']}/cancel",
                   {"cancellation_reason": "requested_by_customer"})
    assert res.status_code == 200, res.text
    c = res.json()
    assert c["status"] == "canceled" and c["cancellation_reason"] == "requested_by_customer"
    assert c["amount_capturable"] == 0 and c["amount_received"] == 0 and c["canceled_at"]
    jnl = await journals_for(services, p["id"])
    assert [j["kind"] for j in jnl] == ["authorization", "release"]
    bal = await merchant_balances(services, merchant.merchant_id)
    assert bal[("card_authorizations", "EUR")] == 0
    evs = await payment_events(services, p["id"])
    assert evs[-1]["type"] == "payment.canceled"
    assert evs[-1]["data"]["previous_attributes"]["cancellation_reason"] is None
    assert_error(raw.post(f"/v1/payments/{p['id']}/capture", {}), 409, "invalid_request_error",
                 "payment_invalid_state")
    assert raw.get(f"/v1/payments/{p['id']}").json() == c


async def test_create_then_confirm_and_cancel_unconfirmed(merchant, services):
    raw = merchant.raw()
    p = _create(raw, VISA, confirm=False).json()
    assert p["status"] == "requires_confirmation" and p["version"] == 1
    conf = raw.post(f"/v1/payments/{p['id']}/confirm", {})
    assert conf.status_code == 200, conf.text
    assert conf.json()["status"] == "succeeded"
    bare = raw.post("/v1/payments", {"amount": 500, "currency": "JPY",
                                     "merchant_order_id": "bare"}).json()
    assert bare["status"] == "requires_payment_method" and bare["payment_method"] is None
    assert_error(raw.post(f"/v1/payments/{bare['id']}/confirm", {}), 409,
                 "invalid_request_error", "payment_invalid_state")
    cx = raw.post(f"/v1/payments/{bare['id']}/cancel", {"cancellation_reason": "abandoned"})
    assert cx.status_code == 200 and cx.json()["status"] == "canceled"
    assert await journals_for(services, bare["id"]) == []
    types = [e["type"] for e in await payment_events(services, bare["id"])]
    assert types == ["payment.created", "payment.canceled"]


async def test_confirm_with_a_payment_method_later(merchant):
    raw = merchant.raw()
    bare = raw.post("/v1/payments", {"amount": 700, "currency": "USD",
                                     "merchant_order_id": "late-pm"}).json()
    res = raw.post(f"/v1/payments/{bare['id']}/confirm",
                   {"payment_method": payment_body(JCB)["payment_method"]})
    assert res.status_code == 200, res.text
    assert res.json()["status"] == "succeeded"
    assert res.json()["payment_method"]["card"]["brand"] == "jcb"


async def test_reusing_a_token(merchant, services):
    raw = merchant.raw()
    first = _create(raw, VISA).json()
    token = first["payment_method"]["id"]
    res = raw.post("/v1/payments", {"amount": 300, "currency": "USD",
                                    "merchant_order_id": "again", "confirm": True,
                                    "payment_method": {"type": "card", "token": token}})
    assert res.status_code == 201, res.text
    again = res.json()
    assert again["status"] == "succeeded"
    assert again["payment_method"]["card"] == first["payment_method"]["card"]


def _illegal(raw: Any, path: str, body: dict[str, Any], pay_id: str) -> None:
    before = raw.get(f"/v1/payments/{pay_id}").json()
    res = raw.post(path, body)
    assert_error(res, 409, "invalid_request_error", "payment_invalid_state")
    assert raw.get(f"/v1/payments/{pay_id}").json() == before  # version and all unchanged


async def test_illegal_transitions_change_nothing(merchant, services):
    raw = merchant.raw()
    unconfirmed = _create(raw, VISA, confirm=False).json()
    _illegal(raw, f"/v1/payments/{unconfirmed['id']}/capture", {}, unconfirmed["id"])
    _illegal(raw, f"/v1/payments/{unconfirmed['id']}/capture", {"amount": 10},
             unconfirmed["id"])
    succeeded = _create(raw, VISA).json()
    _illegal(raw, f"/v1/payments/{succeeded['id']}/cancel", {}, succeeded["id"])
    _illegal(raw, f"/v1/payments/{succeeded['id']}/confirm", {}, succeeded["id"])
    _illegal(raw, f"/v1/payments/{succeeded['id']}/capture", {}, succeeded["id"])
    failed = _create(raw, DECLINED).json()["error"]["payment"]
    for action in ("confirm", "capture", "cancel"):
        _illegal(raw, f"/v1/payments/{failed['id']}/{action}", {}, failed["id"])
    canceled = _create(raw, VISA, confirm=False).json()
    assert raw.post(f"/v1/payments/{canceled['id']}/cancel", {}).status_code == 200
    for action in ("confirm", "capture", "cancel"):
        _illegal(raw, f"/v1/payments/{canceled['id']}/{action}", {}, canceled["id"])
    action = _create(raw, THREE_DS).json()
    _illegal(raw, f"/v1/payments/{action['id']}/capture", {}, action["id"])
    ops_before = await acquirer_operations(services, succeeded["id"])
    assert len(ops_before) == 1


async def test_confirm_twice(merchant, services):
    raw = merchant.raw()
    p = _create(raw, VISA, confirm=False).json()
    assert raw.post(f"/v1/payments/{p['id']}/confirm", {}).status_code == 200
    _illegal(raw, f"/v1/payments/{p['id']}/confirm", {}, p["id"])
    held = _create(raw, VISA, capture_method="manual").json()
    assert held["status"] == "requires_capture"
    _illegal(raw, f"/v1/payments/{held['id']}/confirm", {}, held["id"])
    assert len(await acquirer_operations(services, held["id"])) == 1
    assert [j["kind"] for j in await journals_for(services, held["id"])] == ["authorization"]
    challenged = _create(raw, THREE_DS).json()
    _illegal(raw, f"/v1/payments/{challenged['id']}/confirm", {}, challenged["id"])
    assert len(await acquirer_operations(services, challenged["id"])) == 1
    assert not await ledger_problems(services)


async def test_list_filters(merchant):
    raw = merchant.raw()
    ok = _create(raw, VISA, order="list-a").json()
    _create(raw, DECLINED, order="list-b")
    data = raw.get("/v1/payments?status=succeeded").json()["data"]
    assert [p["id"] for p in data] == [ok["id"]]
    assert len(raw.get("/v1/payments").json()["data"]) == 2
    assert raw.get("/v1/payments?limit=1").json()["has_more"] is True


async def test_event_payloads_and_balance(merchant, services):
    raw = merchant.raw()
    p = _create(raw, VISA, amount=2000).json()
    for ev in await payment_events(services, p["id"]):
        assert ev["id"].startswith("evt_") and ev["object"] == "event"
        assert ev["created"].endswith("Z") and ev["livemode"] is False
        assert ev["request"]["id"].startswith("req_")
        assert VISA not in json.dumps(ev)
    bal = raw.get("/v1/balance")
    assert bal.status_code == 200, bal.text
    assert {"amount": 2000 - 88, "currency": "USD"} in bal.json()["pending"]


@pytest.mark.parametrize("flow", ["authorize", "capture"])
async def test_cancel_while_the_acquirer_call_is_in_flight(merchant, services, monkeypatch,
                                                           flow: str) -> None:
    """A cancel that arrives while the acquirer is being asked must not win: the card would be
    charged (or captured) for a payment that says canceled."""
    caller = Caller(merchant.merchant_id, False)
    sim = services.connectors["simulator"]
    real = getattr(sim, flow)
    refused: list[str] = []

    async def racing(*args: Any) -> Any:
        pay_id = args[0].payment_id if flow == "authorize" else held["id"]
        try:
            await svc_payments.cancel_payment(services, caller, pay_id)
        except Conflict as exc:
            refused.append(exc.code)
        return await real(*args)

    params = {"amount": 800, "currency": "USD", "merchant_order_id": "race", "confirm": True,
              "capture_method": "manual" if flow == "capture" else "automatic",
              "payment_method": {"type": "card"}}
    card = svc_payments.CardInput(VISA, 12, 2034, "123")
    held: dict[str, Any] = {}
    if flow == "capture":
        held, _ = await svc_payments.create_payment(services, caller, params, card)
    monkeypatch.setattr(sim, flow, racing)
    if flow == "authorize":
        view, _ = await svc_payments.create_payment(services, caller, params, card)
    else:
        view = await svc_payments.capture_payment(services, caller, held["id"])
    assert refused == ["payment_invalid_state"]
    assert view["status"] == "succeeded" and view["amount_received"] == 800
    async with services.db.read() as conn:
        reviews = (await conn.execute(select(review_items).where(
            review_items.c.object_id == view["id"]))).all()
    assert reviews == []
    assert not await ledger_problems(services)
