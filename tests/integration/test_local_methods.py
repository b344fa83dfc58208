"""Local and asynchronous payment methods over the real server (CONTRACT §6, issue 5): each
method's happy path, validation with the offending ``param``, the test clock and the worker's
expiry (exactly once, also with two job runners at once), money arriving after expiry, under-
and over-payment, SEPA late failure, refunds by bank transfer, and the ledger after all of it."""

from __future__ import annotations

import asyncio
import re
from datetime import datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from openpse.domain.bank_details import build_iban, iban_mod97
from openpse.services.context import Caller
from openpse.storage.tables import payments, review_items
from tests.conftest import new_merchant
from tests.support.api_asserts import assert_error, eventually
from tests.support.ledger import (
    journals_for,
    ledger_problems,
    merchant_balances,
    payment_events,
    payment_row,
)

IBAN_OK = "DE89370400440532013000"
IBAN_RETURNED = "DE62370400440532013001"  # sandbox: returned at settlement (insufficient_funds)
HANAKO = {"name": "山田 花子", "email": "hanako@example.jp", "phone": "090-1234-5678"}
JOAO = {"name": "João da Silva", "email": "joao@example.com.br"}
ERIKA = {"name": "Erika Mustermann", "email": "erika@example.de"}
CPF = "123.456.789-09"
JP_ACCOUNT = {"type": "jp_bank_account", "bank_code": "0005", "branch_code": "123",
              "account_type": "futsu", "account_number": "7654321",
              "account_holder_name": "ヤマダ ハナコ"}
DAY = 86400


def _seconds(ts: str) -> int:
    return int(datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp())


def _pay(raw: Any, method: str, *, amount: int, currency: str, customer: dict[str, str] | None,
         details: dict[str, Any] | None = None, order: str = "ord-local", confirm: bool = True,
         **extra: Any) -> dict[str, Any]:
    pm: dict[str, Any] = {"type": method}
    if details is not None:
        pm[method] = details
    body: dict[str, Any] = {"amount": amount, "currency": currency, "merchant_order_id": order,
                            "payment_method": pm, "confirm": confirm, **extra}
    if customer is not None:
        body["customer"] = customer
    res = raw.post("/v1/payments", body)
    assert res.status_code == 201, res.text
    return dict(res.json())


def _konbini(raw: Any, amount: int = 2480, **kw: Any) -> dict[str, Any]:
    return _pay(raw, "konbini", amount=amount, currency="JPY", customer=HANAKO, **kw)


def _helper(raw: Any, payment_id: str, action: str, body: dict[str, Any] | None = None,
            status: int = 200) -> dict[str, Any]:
    res = raw.post(f"/v1/test_helpers/payments/{payment_id}/{action}", body or {})
    assert res.status_code == status, res.text
    return dict(res.json())


def _advance(raw: Any, seconds: int) -> dict[str, Any]:
    res = raw.post("/v1/test_helpers/clock/advance", {"seconds": seconds})
    assert res.status_code == 200, res.text
    return dict(res.json())


def _events(raw: Any, type_: str, object_id: str) -> list[dict[str, Any]]:
    res = raw.get(f"/v1/events?type={type_}&object_id={object_id}&limit=100")
    assert res.status_code == 200, res.text
    return list(res.json()["data"])


async def _reviews(services: Any, payment_id: str) -> list[dict[str, Any]]:
    async with services.db.read() as conn:
        rows = (await conn.execute(select(review_items).where(
            review_items.c.object_id == payment_id).order_by(review_items.c.id))).all()
    return [dict(r._mapping) for r in rows]


def _kinds(journals: list[dict[str, Any]]) -> list[str]:
    return [j["kind"] for j in journals]


# ---- konbini, pay_easy, boleto: vouchers ----------------------------------------------------

async def test_konbini_voucher_paid(merchant, services) -> None:
    raw = merchant.raw()
    p = _konbini(raw, details={"expires_after_days": 2})
    assert p["status"] == "requires_action" and p["payment_method"]["type"] == "konbini"
    na = p["next_action"]
    assert na["type"] == "display_voucher" and na["method"] == "konbini"
    assert re.fullmatch(r"\d{11}", na["payment_number"])
    assert re.fullmatch(r"\d{6}", na["confirmation_number"])
    assert set(na["stores"]) == {"seven_eleven", "familymart", "lawson", "ministop", "seicomart"}
    assert p["expires_at"] == na["expires_at"] and p["expires_at"].endswith("14:59:59Z")
    days = (_seconds(p["expires_at"]) - _seconds(p["created"])) / DAY
    assert 2 <= days <= 3  # the end of the second day after today, in JST
    assert [e["type"] for e in await payment_events(services, p["id"])] == [
        "payment.created", "payment.requires_action"]
    assert raw.get(f"/v1/payments/{p['id']}").json() == p

    page = httpx.get(na["hosted_voucher_url"])  # the shopper's page, in Japanese by currency
    assert page.status_code == 200 and 'lang="ja"' in page.text
    assert f'data-field="payment_number">{na["payment_number"]}<' in page.text
    assert "ファミリーマート" in page.text and "お支払い期限" in page.text
    assert httpx.get(na["hosted_voucher_url"].split("?")[0] + "?token=x").status_code == 404

    paid = _helper(raw, p["id"], "pay_voucher", {"store": "familymart"})
    assert paid["status"] == "succeeded" and paid["amount_received"] == 2480
    assert paid["next_action"] is None and paid["captured_at"] is not None
    assert paid["payment_method"]["konbini"]["store"] == {"chain": "familymart"}
    assert paid["fee"] == (2480 * 275 + 5000) // 10000 + 190  # DEFAULT_PRICING konbini
    assert _kinds(await journals_for(services, p["id"])) == ["payment_received"]
    bal = await merchant_balances(services, merchant.merchant_id)
    assert bal[("acquirer_receivable", "JPY")] == 2480
    assert bal[("merchant_pending", "JPY")] == -(2480 - paid["fee"])
    # A voucher is paid once: a repeat is refused, recorded, and moves no money.
    again = raw.post(f"/v1/test_helpers/payments/{p['id']}/pay_voucher", {})
    err = assert_error(again, 409, "invalid_request_error", "payment_invalid_state")
    assert err["review_item"].startswith("rev_")
    assert _kinds(await journals_for(services, p["id"])) == ["payment_received"]
    assert raw.get(f"/v1/payments/{p['id']}").json() == paid
    assert "お支払いを受け付けました" in httpx.get(na["hosted_voucher_url"]).text
    assert not await ledger_problems(services)


async def test_pay_easy_voucher(merchant, services) -> None:
    raw = merchant.raw()
    p = _pay(raw, "pay_easy", amount=54000, currency="JPY",
             customer={"name": "佐藤 一郎", "phone": "+81 3 1234 5678"})
    na = p["next_action"]
    assert na["type"] == "display_voucher" and na["method"] == "pay_easy"
    assert re.fullmatch(r"\d{5}", na["institution_number"])
    assert re.fullmatch(r"\d{20}", na["customer_number"])
    assert re.fullmatch(r"\d{6}", na["confirmation_number"])
    assert _helper(raw, p["id"], "pay_voucher")["status"] == "succeeded"
    assert not await ledger_problems(services)


async def test_boleto_paid(merchant, services) -> None:
    raw = merchant.raw()
    p = _pay(raw, "boleto", amount=15990, currency="BRL", customer=JOAO,
             details={"tax_id": CPF, "expires_after_days": 5})
    assert p["payment_method"]["boleto"] == {"expires_after_days": 5, "tax_id_type": "cpf",
                                             "tax_id": "***.456.789-**"}
    assert "123.456.789" not in str(p)
    na = p["next_action"]
    assert na["type"] == "display_boleto_details"
    assert len(re.sub(r"\D", "", na["number"])) == 47 and re.fullmatch(r"\d{44}", na["barcode"])
    assert na["barcode"][9:19] == "0000015990"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d", na["due_date"])
    assert p["expires_at"].endswith("02:59:59Z")  # 23:59:59 in Brasília
    page = httpx.get(na["hosted_voucher_url"]).text
    assert 'lang="pt-BR"' in page and na["number"] in page and "Vencimento" in page
    paid = _helper(raw, p["id"], "pay_voucher")
    assert paid["status"] == "succeeded" and paid["fee"] == (15990 * 350 + 5000) // 10000 + 345
    assert not await ledger_problems(services)


# ---- validation -----------------------------------------------------------------------------

@pytest.mark.parametrize(("method", "amount", "currency", "customer", "details", "extra", "code",
                          "param"), [
    ("sepa_debit", 1000, "EUR", ERIKA, {"iban": "DE89370400440532013009"}, {}, "invalid_iban",
     "payment_method[sepa_debit][iban]"),
    ("sepa_debit", 1000, "EUR", ERIKA, {"iban": "DE8937040044053201300"}, {}, "invalid_iban",
     "payment_method[sepa_debit][iban]"),
    ("sepa_debit", 1000, "USD", ERIKA, {"iban": IBAN_OK}, {}, "currency_not_supported",
     "currency"),
    ("sepa_debit", 1000, "EUR", {"name": "Erika"}, {"iban": IBAN_OK}, {}, "parameter_missing",
     "customer[email]"),
    ("boleto", 1000, "BRL", JOAO, {"tax_id": "123.456.789-00"}, {}, "invalid_tax_id",
     "payment_method[boleto][tax_id]"),
    ("boleto", 1000, "BRL", JOAO, {"tax_id": "11.222.333/0001-80"}, {}, "invalid_tax_id",
     "payment_method[boleto][tax_id]"),
    ("boleto", 1000, "JPY", JOAO, {"tax_id": CPF}, {}, "currency_not_supported", "currency"),
    ("pay_easy", 1000, "JPY", {"name": "佐藤"}, None, {}, "parameter_missing",
     "customer[phone]"),
    ("konbini", 1000, "JPY", {"name": "花子"}, None, {}, "parameter_missing", "customer[phone]"),
    ("konbini", 1000, "JPY", {**HANAKO, "phone": "555-0100"}, None, {}, "parameter_invalid",
     "customer[phone]"),
    ("konbini", 1000, "JPY", {"email": "h@example.jp"}, None, {}, "parameter_missing",
     "customer[name]"),
    ("konbini", 119, "JPY", HANAKO, None, {}, "amount_out_of_range", "amount"),
    ("konbini", 300_001, "JPY", HANAKO, None, {}, "amount_out_of_range", "amount"),
    ("konbini", 1000, "USD", HANAKO, None, {}, "currency_not_supported", "currency"),
    ("konbini", 1000, "JPY", HANAKO, {"expires_after_days": 4}, {}, "parameter_invalid",
     "payment_method[konbini][expires_after_days]"),
    ("konbini", 1000, "JPY", HANAKO, {"nonsense": 1}, {}, "parameter_unknown",
     "payment_method[konbini][nonsense]"),
    ("konbini", 1000, "JPY", HANAKO, None, {"capture_method": "manual"}, "parameter_invalid",
     "capture_method"),
    ("bank_transfer", 1000, "USD", None, None, {}, "currency_not_supported", "currency"),
])
def test_validation_failures_name_the_param_and_write_nothing(
        merchant, method: str, amount: int, currency: str, customer: Any, details: Any,
        extra: dict[str, Any], code: str, param: str) -> None:
    raw = merchant.raw()
    pm: dict[str, Any] = {"type": method}
    if details is not None:
        pm[method] = details
    body: dict[str, Any] = {"amount": amount, "currency": currency, "merchant_order_id": "bad",
                            "payment_method": pm, "confirm": True, **extra}
    if customer is not None:
        body["customer"] = customer
    res = raw.post("/v1/payments", body)
    err = assert_error(res, 400, "invalid_request_error", code, param=param)
    assert IBAN_OK[4:] not in err["message"]
    assert raw.get("/v1/payments").json()["data"] == []


def test_method_details_must_match_the_type(merchant) -> None:
    raw = merchant.raw()
    res = raw.post("/v1/payments", {
        "amount": 1000, "currency": "JPY", "merchant_order_id": "x",
        "payment_method": {"type": "card", "konbini": {}}})
    assert_error(res, 400, "invalid_request_error", "parameter_invalid",
                 param="payment_method[konbini]")
    res = raw.post("/v1/payments", {
        "amount": 1000, "currency": "JPY", "merchant_order_id": "x", "customer": HANAKO,
        "payment_method": {"type": "konbini", "card": {"number": "4242424242424242",
                                                       "exp_month": 12, "exp_year": 2034}}})
    assert_error(res, 400, "invalid_request_error", "parameter_invalid",
                 param="payment_method[card]")


def test_create_then_confirm(merchant) -> None:
    raw = merchant.raw()
    p = _konbini(raw, confirm=False)
    assert p["status"] == "requires_confirmation" and p["next_action"] is None
    done = raw.post(f"/v1/payments/{p['id']}/confirm", {})
    assert done.status_code == 200, done.text
    assert done.json()["status"] == "requires_action"
    assert_error(raw.post(f"/v1/payments/{p['id']}/confirm", {}), 409, "invalid_request_error",
                 "payment_invalid_state")
    # Confirming a card-less payment with a local method validates it against the payment.
    q = raw.post("/v1/payments", {"amount": 1000, "currency": "USD", "merchant_order_id": "y",
                                  "customer": HANAKO}).json()
    res = raw.post(f"/v1/payments/{q['id']}/confirm", {"payment_method": {"type": "konbini"}})
    assert_error(res, 400, "invalid_request_error", "currency_not_supported", param="currency")
    assert raw.get(f"/v1/payments/{q['id']}").json()["status"] == "requires_payment_method"


# ---- the test clock -----------------------------------------------------------------------

async def test_clock_is_per_merchant_and_sandbox_only(services, server, merchant) -> None:
    raw = merchant.raw()
    start = raw.get("/v1/test_helpers/clock").json()
    assert start["object"] == "test_clock" and start["offset_seconds"] == 0
    first = _advance(raw, 3600)
    second = _advance(raw, 2 * DAY)
    assert second["offset_seconds"] == 3600 + 2 * DAY and first["offset_seconds"] == 3600
    assert _seconds(second["now"]) - _seconds(start["now"]) >= 3600 + 2 * DAY
    for bad in (0, -5, 401 * DAY):
        assert_error(raw.post("/v1/test_helpers/clock/advance", {"seconds": bad}), 400,
                     "invalid_request_error", "parameter_invalid", param="seconds")
    assert_error(raw.post("/v1/test_helpers/clock/advance", {"seconds": 1.5}), 400,
                 "invalid_request_error", "parameter_invalid", param="seconds")
    other = await new_merchant(services, server.base_url)
    assert other.raw().get("/v1/test_helpers/clock").json()["offset_seconds"] == 0
    live = await new_merchant(services, server.base_url, livemode=True)
    for path, body in (("/v1/test_helpers/clock/advance", {"seconds": 60}),
                       ("/v1/test_helpers/payments/pay_x/pay_voucher", {}),
                       ("/v1/test_helpers/payments/pay_x/fund", {"amount": 1})):
        assert_error(live.raw().post(path, body), 404, "invalid_request_error",
                     "route_not_found")
    assert live.raw().get("/v1/test_helpers/clock").status_code == 404


async def test_voucher_expires_by_clock_and_worker_exactly_once(merchant, services) -> None:
    raw = merchant.raw()
    p = _konbini(raw, details={"expires_after_days": 1})
    keep = _konbini(raw, details={"expires_after_days": 3}, order="keeps")
    clock = raw.get("/v1/test_helpers/clock").json()
    to_deadline = _seconds(p["expires_at"]) - _seconds(clock["now"])
    _advance(raw, to_deadline - 1800)  # half an hour before: payment.expiring_soon, once
    eventually(lambda: _assert_count(raw, "payment.expiring_soon", p["id"], 1), timeout_s=10)
    assert raw.get(f"/v1/payments/{p['id']}").json()["status"] == "requires_action"
    _advance(raw, 1800 + 1)
    got = eventually(lambda: _assert_status(raw, p["id"], "canceled"), timeout_s=10)
    assert got["cancellation_reason"] == "expired" and got["next_action"] is None
    assert got["canceled_at"] is not None and got["version"] == p["version"] + 1
    await asyncio.sleep(0.5)  # the worker keeps polling: nothing happens twice
    [ev] = _events(raw, "payment.canceled", p["id"])
    assert ev["data"]["object"]["status"] == "canceled" and ev["request"] is None
    assert ev["data"]["previous_attributes"]["status"] == "requires_action"
    assert len(_events(raw, "payment.expiring_soon", p["id"])) == 1
    assert raw.get(f"/v1/payments/{keep['id']}").json()["status"] == "requires_action"
    page = httpx.get(p["next_action"]["hosted_voucher_url"])
    assert "お支払い期限が過ぎました" in page.text and p["next_action"]["payment_number"] \
        not in page.text
    assert await journals_for(services, p["id"]) == []  # no money moved


def _assert_count(raw: Any, type_: str, object_id: str, n: int) -> None:
    assert len(_events(raw, type_, object_id)) == n


def _assert_status(raw: Any, payment_id: str, status: str) -> dict[str, Any]:
    got = raw.get(f"/v1/payments/{payment_id}").json()
    assert got["status"] == status, got["status"]
    return dict(got)


async def test_two_job_runners_expire_each_voucher_once(services, test_settings,
                                                        merchant) -> None:
    from openpse.bootstrap import build_services
    from openpse.services.local_payments import expire_due_payments, warn_expiring_payments

    raw = merchant.raw()
    vouchers = [_konbini(raw, details={"expires_after_days": 1}, order=f"race-{i}")
                for i in range(4)]
    transfer = _pay(raw, "bank_transfer", amount=5000, currency="JPY", customer=None,
                    details={"expires_after_days": 1})
    due = max(_seconds(v["expires_at"]) for v in [*vouchers, transfer]) + 1
    second = build_services(test_settings)  # another worker: its own engine and writer
    try:
        # The server's own worker runs on wall time and leaves these alone; ours look ahead.
        await asyncio.gather(*(warn_expiring_payments(s, due - 600)
                               for s in (services, second, services, second)))
        counts = await asyncio.gather(*(expire_due_payments(s, due)
                                        for s in (services, second, services, second)))
        assert await expire_due_payments(second, due) == 0
    finally:
        await second.db.dispose()
    assert sum(counts) >= 5  # every due payment of this merchant, each counted once
    for p in (*vouchers, transfer):
        got = raw.get(f"/v1/payments/{p['id']}").json()
        assert got["status"] == "canceled" and got["cancellation_reason"] == "expired"
        assert got["version"] == p["version"] + 1
        assert len(_events(raw, "payment.canceled", p["id"])) == 1
        assert len(_events(raw, "payment.expiring_soon", p["id"])) == 1


# ---- money after expiry -------------------------------------------------------------------

async def test_voucher_paid_after_expiry_is_held_and_reviewed(merchant, services) -> None:
    raw = merchant.raw()
    p = _konbini(raw, details={"expires_after_days": 1})
    _advance(raw, 3 * DAY)
    expired = eventually(lambda: _assert_status(raw, p["id"], "canceled"), timeout_s=10)
    late = raw.post(f"/v1/test_helpers/payments/{p['id']}/pay_voucher", {})
    err = assert_error(late, 409, "invalid_request_error", "payment_expired")
    assert "2480 JPY" in err["message"] and err["review_item"] in err["message"]
    assert err["payment"]["status"] == "canceled"
    assert raw.get(f"/v1/payments/{p['id']}").json() == expired  # never accepted
    [review] = await _reviews(services, p["id"])
    assert review["id"] == err["review_item"] and review["kind"] == "payment_after_expiry"
    assert review["details"]["amount"] == 2480 and review["status"] == "open"
    assert _kinds(await journals_for(services, p["id"])) == ["unapplied_funds"]
    bal = await merchant_balances(services, merchant.merchant_id)
    assert bal[("unapplied_funds", "JPY")] == -2480 and bal[("acquirer_receivable", "JPY")] == 2480
    assert bal.get(("merchant_pending", "JPY"), 0) == 0  # not the merchant's money
    assert not await ledger_problems(services)


async def test_pay_voucher_past_deadline_before_the_worker(merchant, services) -> None:
    """The helper itself expires a payment past its deadline (the worker races it): either way
    the payment is canceled once, the money is held, the caller gets 409."""
    from openpse.services.clock import advance_clock
    from openpse.services.local_payments import pay_voucher

    raw = merchant.raw()
    p = _konbini(raw, details={"expires_after_days": 1})
    caller = Caller(merchant.merchant_id, False)
    await advance_clock(services, caller, 3 * DAY)
    with pytest.raises(Exception) as info:
        await pay_voucher(services, caller, p["id"])
    assert getattr(info.value, "code", None) == "payment_expired"
    await asyncio.sleep(0.5)
    assert len(_events(raw, "payment.canceled", p["id"])) == 1
    assert (await payment_row(services, p["id"]))["cancellation_reason"] == "expired"
    assert not await ledger_problems(services)


# ---- bank transfer: under- and over-payment ----------------------------------------------------

async def test_bank_transfer_under_then_over_paid(merchant, services) -> None:
    raw = merchant.raw()
    p = _pay(raw, "bank_transfer", amount=10000, currency="JPY", customer={"name": "花子"})
    na = p["next_action"]
    assert na["type"] == "display_bank_transfer_instructions"
    fa = na["financial_address"]
    assert fa["type"] == "zengin" and re.fullmatch(r"\d{7}", fa["account_number"])
    assert na["amount_remaining"] == 10000 and p["expires_at"] is not None
    under = _helper(raw, p["id"], "fund", {"amount": 4000})
    assert under["status"] == "requires_action" and under["amount_received"] == 4000
    assert under["next_action"]["amount_remaining"] == 6000
    assert under["next_action"]["financial_address"] == fa  # the same account to pay into
    assert len(_events(raw, "payment.partially_funded", p["id"])) == 1
    over = _helper(raw, p["id"], "fund", {"amount": 7500})
    assert over["status"] == "succeeded" and over["amount_received"] == 10000
    assert over["amount_overpaid"] == 1500 and over["next_action"] is None
    assert over["fee"] == 100  # 1% of the amount, not of what was sent
    after = _helper(raw, p["id"], "fund", {"amount": 500})  # another transfer, after success
    assert after["status"] == "succeeded" and after["amount_overpaid"] == 2000
    assert _kinds(await journals_for(services, p["id"])) == [
        "part_payment", "payment_received", "overpayment"]
    bal = await merchant_balances(services, merchant.merchant_id)
    assert bal[("acquirer_receivable", "JPY")] == 12000
    assert bal[("overpayments_payable", "JPY")] == -2000
    assert bal[("shopper_funds_held", "JPY")] == 0
    assert bal[("merchant_pending", "JPY")] == -9900

    # The excess is the shopper's: refunded by bank transfer, without touching the payment's.
    res = raw.post("/v1/refunds", {"payment": p["id"], "source": "overpayment",
                                   "destination": JP_ACCOUNT})
    assert res.status_code == 201, res.text
    ref = res.json()
    assert ref["status"] == "pending" and ref["amount"] == 2000 and ref["source"] == "overpayment"
    assert ref["destination"]["last4"] == "4321" and "7654321" not in res.text
    pay = raw.get(f"/v1/payments/{p['id']}").json()
    assert pay["amount_overpaid_refunded"] == 2000 and pay["amount_refunded"] == 0
    assert_error(raw.post("/v1/refunds", {"payment": p["id"], "source": "overpayment",
                                          "amount": 1, "destination": JP_ACCOUNT}),
                 400, "invalid_request_error", "amount_too_large", param="amount")
    done = raw.post(f"/v1/test_helpers/refunds/{ref['id']}/complete", {"outcome": "succeed"})
    assert done.status_code == 200 and done.json()["status"] == "succeeded"
    assert_error(raw.post(f"/v1/test_helpers/refunds/{ref['id']}/complete",
                          {"outcome": "succeed"}), 409, "invalid_request_error",
                 "refund_invalid_state")
    assert _kinds(await journals_for(services, ref["id"])) == ["refund", "refund_paid"]
    bal = await merchant_balances(services, merchant.merchant_id)
    assert bal[("overpayments_payable", "JPY")] == 0 and bal[("refunds_payable", "JPY")] == 0
    assert not await ledger_problems(services)


async def test_part_paid_transfer_expires_and_late_money_is_held(merchant, services) -> None:
    raw = merchant.raw()
    p = _pay(raw, "bank_transfer", amount=8000, currency="JPY", customer=None,
             details={"expires_after_days": 2})
    _helper(raw, p["id"], "fund", {"amount": 3000})
    _advance(raw, 4 * DAY)
    got = eventually(lambda: _assert_status(raw, p["id"], "canceled"), timeout_s=10)
    assert got["cancellation_reason"] == "expired" and got["amount_received"] == 3000
    late = raw.post(f"/v1/test_helpers/payments/{p['id']}/fund", {"amount": 5000})
    assert_error(late, 409, "invalid_request_error", "payment_expired")
    kinds = [r["kind"] for r in await _reviews(services, p["id"])]
    assert kinds == ["part_payment_unapplied", "payment_after_expiry"]
    assert _kinds(await journals_for(services, p["id"])) == [
        "part_payment", "unapplied_funds", "unapplied_funds"]
    bal = await merchant_balances(services, merchant.merchant_id)
    assert bal[("unapplied_funds", "JPY")] == -8000 and bal[("shopper_funds_held", "JPY")] == 0
    assert not await ledger_problems(services)


async def test_merchant_cancels_a_part_paid_transfer(merchant, services) -> None:
    raw = merchant.raw()
    p = _pay(raw, "bank_transfer", amount=8000, currency="JPY", customer=None)
    _helper(raw, p["id"], "fund", {"amount": 1000})
    res = raw.post(f"/v1/payments/{p['id']}/cancel", {"cancellation_reason": "abandoned"})
    assert res.status_code == 200 and res.json()["status"] == "canceled"
    late = raw.post(f"/v1/test_helpers/payments/{p['id']}/fund", {"amount": 7000})
    assert_error(late, 409, "invalid_request_error", "payment_invalid_state")
    assert [r["kind"] for r in await _reviews(services, p["id"])] == [
        "part_payment_unapplied", "payment_after_cancel"]
    assert_error(raw.post(f"/v1/test_helpers/payments/{p['id']}/pay_voucher", {}), 400,
                 "invalid_request_error", "payment_method_mismatch")
    assert not await ledger_problems(services)


def test_eur_transfer_account_is_a_valid_iban(merchant) -> None:
    p = _pay(merchant.raw(), "bank_transfer", amount=25000, currency="EUR", customer=None)
    fa = p["next_action"]["financial_address"]
    assert fa["type"] == "iban" and iban_mod97(fa["iban"]) == 1 and fa["bic"]


# ---- SEPA Direct Debit ----------------------------------------------------------------------

async def test_sepa_debit_settles(merchant, services) -> None:
    raw = merchant.raw()
    res = raw.post("/v1/payments", {
        "amount": 4999, "currency": "EUR", "merchant_order_id": "sepa-1", "confirm": True,
        "customer": ERIKA, "device": {"ip": "203.0.113.9", "user_agent": "Mozilla/5.0"},
        "payment_method": {"type": "sepa_debit",
                           "sepa_debit": {"iban": "DE89 3704 0044 0532 0130 00"}}})
    assert res.status_code == 201, res.text
    assert IBAN_OK not in res.text and "0532013000" not in res.text  # never the full IBAN
    p = res.json()
    assert p["status"] == "processing" and p["next_action"] is None
    debit = p["payment_method"]["sepa_debit"]
    assert debit["last4"] == "3000" and debit["bank_code"] == "37040044"
    assert debit["country"] == "DE" and debit["account_holder_name"] == ERIKA["name"]
    assert len(debit["fingerprint"]) >= 32
    mandate = debit["mandate"]
    assert re.fullmatch(r"OPSE-[0-9A-Z]{16}", mandate["reference"])
    assert mandate["customer_acceptance"] == {"type": "online", "ip": "203.0.113.9",
                                              "user_agent": "Mozilla/5.0"}
    row = await payment_row(services, p["id"])
    assert row["payment_method_enc"] and IBAN_OK not in row["payment_method_enc"]
    for ev in await payment_events(services, p["id"]):
        assert IBAN_OK not in str(ev)
    assert_error(raw.post(f"/v1/payments/{p['id']}/cancel", {}), 409, "invalid_request_error",
                 "payment_invalid_state")
    settled = _helper(raw, p["id"], "settle")
    assert settled["status"] == "succeeded" and settled["amount_received"] == 4999
    assert _kinds(await journals_for(services, p["id"])) == ["debit_submitted", "debit_settled"]
    # A late "returned" answer never overwrites the final state: recorded for review.
    late = raw.post(f"/v1/test_helpers/payments/{p['id']}/fail", {})
    assert_error(late, 409, "invalid_request_error", "payment_invalid_state")
    assert [r["kind"] for r in await _reviews(services, p["id"])] == ["late_network_answer"]
    assert raw.get(f"/v1/payments/{p['id']}").json() == settled
    bal = await merchant_balances(services, merchant.merchant_id)
    assert bal[("direct_debits_submitted", "EUR")] == 0
    assert bal[("acquirer_receivable", "EUR")] == 4999

    # Refunded to the debited account: no destination taken.
    assert_error(raw.post("/v1/refunds", {"payment": p["id"], "destination": JP_ACCOUNT}), 400,
                 "invalid_request_error", "parameter_invalid", param="destination")
    ref = raw.post("/v1/refunds", {"payment": p["id"], "amount": 999}).json()
    assert ref["status"] == "pending" and ref["destination"]["type"] == "iban"
    assert ref["destination"]["last4"] == "3000"
    assert ref["destination"]["mandate"] == mandate["reference"]
    _advance(raw, DAY + 1)
    eventually(lambda: _assert_refund(raw, ref["id"], "succeeded"), timeout_s=10)
    assert not await ledger_problems(services)


def _assert_refund(raw: Any, refund_id: str, status: str) -> dict[str, Any]:
    got = raw.get(f"/v1/refunds/{refund_id}").json()
    assert got["status"] == status, got
    return dict(got)


async def test_sepa_late_failure_after_days_in_processing(merchant, services) -> None:
    raw = merchant.raw()
    p = _pay(raw, "sepa_debit", amount=12000, currency="EUR", customer=ERIKA,
             details={"iban": IBAN_RETURNED, "account_holder_name": "Erika M."})
    assert p["status"] == "processing"
    _advance(raw, 2 * DAY)
    await asyncio.sleep(0.5)
    assert raw.get(f"/v1/payments/{p['id']}").json()["status"] == "processing"  # days pass
    _advance(raw, 3 * DAY + 60)
    failed = eventually(lambda: _assert_status(raw, p["id"], "failed"), timeout_s=10)
    assert failed["failure_code"] == "insufficient_funds" and failed["amount_received"] == 0
    [ev] = _events(raw, "payment.failed", p["id"])
    assert ev["data"]["previous_attributes"]["status"] == "processing"
    assert _kinds(await journals_for(services, p["id"])) == ["debit_submitted", "debit_failed"]
    bal = await merchant_balances(services, merchant.merchant_id)
    assert bal[("direct_debits_submitted", "EUR")] == 0 and bal[("direct_debit_holds",
                                                                  "EUR")] == 0
    assert bal.get(("merchant_pending", "EUR"), 0) == 0
    assert_error(raw.post(f"/v1/test_helpers/payments/{p['id']}/settle", {}), 409,
                 "invalid_request_error", "payment_invalid_state")
    assert raw.get(f"/v1/payments/{p['id']}").json()["status"] == "failed"
    assert_error(raw.post("/v1/refunds", {"payment": p["id"]}), 400, "invalid_request_error",
                 "payment_invalid_state")
    assert not await ledger_problems(services)


async def test_sepa_fail_helper(merchant, services) -> None:
    raw = merchant.raw()
    p = _pay(raw, "sepa_debit", amount=100, currency="EUR", customer=ERIKA,
             details={"iban": IBAN_OK})
    assert_error(raw.post(f"/v1/test_helpers/payments/{p['id']}/fail",
                          {"failure_code": "nope"}), 400, "invalid_request_error",
                 "parameter_invalid", param="failure_code")
    failed = _helper(raw, p["id"], "fail", {"failure_code": "account_closed"})
    assert failed["status"] == "failed" and failed["failure_code"] == "account_closed"
    assert not await ledger_problems(services)


# ---- refunds by bank transfer ---------------------------------------------------------------

async def test_konbini_refunds_need_a_destination_and_are_paid_out(merchant, services) -> None:
    raw = merchant.raw()
    p = _konbini(raw, amount=5000)
    _helper(raw, p["id"], "pay_voucher")
    assert_error(raw.post("/v1/refunds", {"payment": p["id"]}), 400, "invalid_request_error",
                 "parameter_missing", param="destination")
    bad = {**JP_ACCOUNT, "branch_code": "12"}
    assert_error(raw.post("/v1/refunds", {"payment": p["id"], "destination": bad}), 400,
                 "invalid_request_error", "parameter_invalid", param="destination[branch_code]")
    assert_error(raw.post("/v1/refunds", {"payment": p["id"], "destination": {
        "type": "iban", "iban": IBAN_OK, "account_holder_name": "X"}}), 400,
        "invalid_request_error", "parameter_invalid", param="destination[type]")
    res = raw.post("/v1/refunds", {"payment": p["id"], "amount": 2000,
                                   "destination": JP_ACCOUNT, "reason": "requested_by_customer"})
    assert res.status_code == 201, res.text
    ref = res.json()
    assert ref["status"] == "pending" and ref["destination"] == {
        "type": "jp_bank_account", "country": "JP", "bank_code": "0005", "branch_code": "123",
        "account_type": "futsu", "last4": "4321", "account_holder_name": "ヤマダ ハナコ"}
    assert raw.get(f"/v1/payments/{p['id']}").json()["amount_refunded"] == 2000
    # Bounced by the shopper's bank (sandbox: an account ending in 9999): the money is back.
    bounced = raw.post("/v1/refunds", {"payment": p["id"], "amount": 1000, "destination": {
        **JP_ACCOUNT, "account_number": "1239999"}}).json()
    _advance(raw, DAY + 1)
    eventually(lambda: _assert_refund(raw, ref["id"], "succeeded"), timeout_s=10)
    failed = eventually(lambda: _assert_refund(raw, bounced["id"], "failed"), timeout_s=10)
    assert failed["failure_code"] == "account_closed"
    assert raw.get(f"/v1/payments/{p['id']}").json()["amount_refunded"] == 2000
    assert _kinds(await journals_for(services, ref["id"])) == ["refund", "refund_paid"]
    assert _kinds(await journals_for(services, bounced["id"])) == ["refund", "refund_reversal"]
    types = [e["type"] for e in await payment_events(services, ref["id"])]
    assert types == ["refund.created", "refund.succeeded"]
    bal = await merchant_balances(services, merchant.merchant_id)
    assert bal[("refunds_payable", "JPY")] == 0
    assert bal[("acquirer_receivable", "JPY")] == 3000
    # Windows per method, on the merchant's clock: konbini 180 days.
    _advance(raw, 180 * DAY)
    assert_error(raw.post("/v1/refunds", {"payment": p["id"], "destination": JP_ACCOUNT}), 400,
                 "invalid_request_error", "refund_window_expired")
    assert not await ledger_problems(services)


async def test_boleto_refund_to_a_brazilian_account(merchant, services) -> None:
    raw = merchant.raw()
    p = _pay(raw, "boleto", amount=5000, currency="BRL", customer=JOAO, details={"tax_id": CPF})
    _helper(raw, p["id"], "pay_voucher")
    dest = {"type": "br_bank_account", "bank_code": "001", "branch_code": "1234-5",
            "account_type": "checking", "account_number": "12345678-9",
            "account_holder_name": "João da Silva", "tax_id": "529.982.247-25"}
    assert_error(raw.post("/v1/refunds", {"payment": p["id"], "destination": {
        **dest, "tax_id": "529.982.247-26"}}), 400, "invalid_request_error", "invalid_tax_id",
        param="destination[tax_id]")
    ref = raw.post("/v1/refunds", {"payment": p["id"], "destination": dest}).json()
    assert ref["status"] == "pending" and ref["destination"]["tax_id"] == "***.982.247-**"
    done = raw.post(f"/v1/test_helpers/refunds/{ref['id']}/complete", {"outcome": "fail"})
    assert done.json()["status"] == "failed"
    assert raw.get(f"/v1/payments/{p['id']}").json()["amount_refunded"] == 0
    _advance(raw, 91 * DAY)  # boleto: 90 days
    assert_error(raw.post("/v1/refunds", {"payment": p["id"], "destination": dest}), 400,
                 "invalid_request_error", "refund_window_expired")
    assert not await ledger_problems(services)


def test_card_refunds_take_no_destination(merchant) -> None:
    from tests.support.ledger import payment_body

    raw = merchant.raw()
    p = raw.post("/v1/payments", payment_body(amount=1000)).json()
    assert_error(raw.post("/v1/refunds", {"payment": p["id"], "destination": JP_ACCOUNT}), 400,
                 "invalid_request_error", "parameter_invalid", param="destination")
    ref = raw.post("/v1/refunds", {"payment": p["id"], "amount": 100}).json()
    assert ref["destination"] is None and ref["source"] == "payment"
    assert_error(raw.post(f"/v1/test_helpers/refunds/{ref['id']}/complete",
                          {"outcome": "succeed"}), 400, "invalid_request_error",
                 "refund_method_mismatch")


async def test_card_refund_window_follows_the_test_clock(merchant, services) -> None:
    from tests.support.ledger import payment_body

    raw = merchant.raw()
    _advance(raw, 200 * DAY)  # captured "later": the window starts on the merchant's clock
    p = raw.post("/v1/payments", payment_body(amount=1000)).json()
    assert _seconds(p["captured_at"]) - _seconds(p["created"]) >= 200 * DAY
    assert raw.post("/v1/refunds", {"payment": p["id"], "amount": 100}).status_code == 201
    _advance(raw, 181 * DAY)
    assert_error(raw.post("/v1/refunds", {"payment": p["id"], "amount": 100}), 400,
                 "invalid_request_error", "refund_window_expired")


# ---- the books after all of it --------------------------------------------------------------

async def test_ledger_verifies_after_everything(services) -> None:
    assert not await ledger_problems(services)
    async with services.db.read() as conn:
        stuck = (await conn.execute(select(payments.c.id).where(
            payments.c.payment_method_type == "bank_transfer",
            payments.c.amount_received > payments.c.amount))).all()
    assert stuck == []


def test_build_iban_matches_the_sandbox_failure_rule() -> None:
    assert build_iban("DE", "370400440532013001") == IBAN_RETURNED
