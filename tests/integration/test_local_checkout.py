"""Local methods on the hosted checkout page (issue 5): each offered method's form, the voucher,
transfer details or mandate shown afterwards in Japanese, Portuguese or English, the session
completing when the money arrives (and staying open while the voucher can be paid), and a
voucher's own expiry inside a session."""

from __future__ import annotations

import asyncio
import re
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import select

from openpse.storage.tables import payments
from tests.support.api_asserts import eventually
from tests.support.ledger import ledger_problems

DAY = 86400


def _session(merchant: Any, **kw: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "amount": 3980, "currency": "JPY", "merchant_order_id": "ord-local-cs",
        "payment_method_types": ["card", "konbini", "pay_easy", "bank_transfer"],
        "success_url": "https://shop.example/thanks", "cancel_url": "https://shop.example/cart",
        **kw}
    res = merchant.raw().post("/v1/checkout/sessions", body)
    assert res.status_code == 201, res.text
    return dict(res.json())


def _get(merchant: Any, session_id: str) -> dict[str, Any]:
    return dict(merchant.raw().get(f"/v1/checkout/sessions/{session_id}").json())


def _hidden(html: str, name: str) -> str:
    m = re.search(rf'<input type="hidden" name="{name}" value="([^"]*)"', html)
    assert m, f"no hidden {name}"
    return m.group(1)


def _submit(url: str, method: str, fields: dict[str, str],
            headers: dict[str, str] | None = None) -> httpx.Response:
    page = httpx.get(url, headers=headers)
    assert page.status_code == 200, page.text
    parts = urlsplit(url)
    data = {"token": _hidden(page.text, "token"), "nonce": _hidden(page.text, "nonce"),
            "method": method, **fields}
    return httpx.post(f"{parts.scheme}://{parts.netloc}{parts.path}", data=data,
                      headers=headers)


def _field(html: str, name: str) -> str:
    m = re.search(rf'data-field="{name}">([^<]*)<', html)
    assert m, f"no {name} on the page"
    return m.group(1)


async def _session_payments(services: Any, session_id: str) -> list[dict[str, Any]]:
    async with services.db.read() as conn:
        rows = (await conn.execute(select(payments).where(
            payments.c.checkout_session_id == session_id).order_by(payments.c.id))).all()
    return [dict(r._mapping) for r in rows]


def _seconds(ts: str) -> int:
    return int(datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp())


async def test_page_offers_the_methods_that_fit(merchant) -> None:
    cs = _session(merchant, locale="ja")
    html = httpx.get(cs["url"]).text
    for m in ("card", "konbini", "pay_easy", "bank_transfer"):
        assert f'data-method="{m}"' in html
        assert f'<input type="hidden" name="method" value="{m}">' in html
    assert "コンビニ払い" in html and "ペイジー" in html and "銀行振込" in html
    assert 'id="konbini-phone"' in html and 'id="number"' in html
    usd = _session(merchant, currency="USD", amount=5000)  # konbini & co. take JPY only
    html = httpx.get(usd["url"]).text
    assert 'data-method="konbini"' not in html and 'name="number"' in html
    res = _submit(usd["url"], "konbini", {"name": "Hanako", "email": "h@example.jp"})
    assert res.status_code == 400 and "None of this checkout" in res.text


async def test_konbini_on_the_page_then_paid(services, merchant) -> None:
    cs = _session(merchant, locale="ja", customer={"email": "hanako@example.jp"})
    form = httpx.get(cs["url"]).text
    assert 'value="hanako@example.jp"' in form  # the session's customer is filled in
    bad = _submit(cs["url"], "konbini", {"name": "山田 花子", "email": "hanako@example.jp",
                                         "phone": "12-34"})
    assert bad.status_code == 400 and "10桁または11桁の電話番号" in bad.text
    assert 'value="山田 花子"' in bad.text  # what the shopper typed is kept
    assert await _session_payments(services, cs["id"]) == []
    res = _submit(cs["url"], "konbini", {"name": "山田 花子", "email": "hanako@example.jp",
                                         "phone": "090-1234-5678"})
    assert res.status_code == 303 and res.headers["location"] == cs["url"]
    voucher = httpx.get(cs["url"])
    assert voucher.status_code == 200 and 'lang="ja"' in voucher.text
    [pay] = await _session_payments(services, cs["id"])
    api = merchant.raw().get(f"/v1/payments/{pay['id']}").json()
    assert api["status"] == "requires_action" and api["checkout_session"] == cs["id"]
    assert api["customer"]["phone"] == "090-1234-5678"
    assert _field(voucher.text, "payment_number") == api["next_action"]["payment_number"]
    assert _field(voucher.text, "confirmation_number") == \
        api["next_action"]["confirmation_number"]
    assert "コンビニでのお支払い" in voucher.text and "Loppi" in voucher.text
    assert 'name="number"' not in voucher.text  # no second payment while the voucher is open
    # The session stays open while the voucher can be paid.
    held = _get(merchant, cs["id"])
    assert held["status"] == "open" and held["expires_at"] == api["expires_at"]
    again = _submit_raw(cs["url"], "card", {"number": "4242424242424242", "exp_month": "12",
                                            "exp_year": "2034", "cvc": "123"})
    assert again.status_code == 200 and api["next_action"]["payment_number"] in again.text
    assert len(await _session_payments(services, cs["id"])) == 1

    paid = merchant.raw().post(f"/v1/test_helpers/payments/{pay['id']}/pay_voucher", {})
    assert paid.json()["status"] == "succeeded"
    done = _get(merchant, cs["id"])
    assert done["status"] == "complete" and done["payment"] == pay["id"]
    assert "お支払いを受け付けました" in httpx.get(cs["url"]).text
    assert not await ledger_problems(services)


def _submit_raw(url: str, method: str, fields: dict[str, str]) -> httpx.Response:
    """A stale tab's form posted again (the page itself shows no form any more)."""
    parts = urlsplit(url)
    token = parts.query.split("token=")[1]
    page = httpx.get(url)
    nonce = re.search(r'name="nonce" value="([^"]*)"', page.text)
    return httpx.post(f"{parts.scheme}://{parts.netloc}{parts.path}", data={
        "token": token, "nonce": nonce.group(1) if nonce else "x", "method": method, **fields})


async def test_bank_transfer_details_in_english(services, merchant) -> None:
    cs = _session(merchant, locale="en", amount=120000)
    res = _submit(cs["url"], "bank_transfer", {"name": "Taro", "email": "taro@example.jp"})
    assert res.status_code == 303
    html = httpx.get(cs["url"]).text
    [pay] = await _session_payments(services, cs["id"])
    fa = pay["next_action"]["financial_address"]
    assert _field(html, "account_number") == fa["account_number"]
    assert _field(html, "amount_remaining") == "120,000 JPY"
    assert "Transfer to this account" in html and "Transfer exactly the amount" in html
    merchant.raw().post(f"/v1/test_helpers/payments/{pay['id']}/fund", {"amount": 20000})
    assert _field(httpx.get(cs["url"]).text, "amount_remaining") == "100,000 JPY"
    merchant.raw().post(f"/v1/test_helpers/payments/{pay['id']}/fund", {"amount": 100000})
    assert _get(merchant, cs["id"])["status"] == "complete"


async def test_boleto_in_portuguese(services, merchant) -> None:
    cs = _session(merchant, currency="BRL", amount=24990, locale="pt-BR",
                  payment_method_types=["boleto", "card"])
    form = httpx.get(cs["url"]).text
    assert 'lang="pt-BR"' in form and "Boleto bancário" in form and "CPF ou CNPJ" in form
    assert "Número do cartão" in form
    bad = _submit(cs["url"], "boleto", {"name": "João da Silva", "email": "joao@example.com.br",
                                        "tax_id": "123.456.789-00"})
    assert bad.status_code == 400 and "CPF ou CNPJ não é válido" in bad.text
    ok = _submit(cs["url"], "boleto", {"name": "João da Silva", "email": "joao@example.com.br",
                                       "tax_id": "123.456.789-09"})
    assert ok.status_code == 303
    html = httpx.get(cs["url"]).text
    [pay] = await _session_payments(services, cs["id"])
    assert _field(html, "number") == pay["next_action"]["number"]
    assert _field(html, "due_date") == pay["next_action"]["due_date"]
    assert "Seu boleto" in html and "lotérica" in html
    assert "123.456.789-09" not in html
    # A bare "pt" browser gets Portuguese too (auto locale).
    auto = _session(merchant, currency="BRL", amount=24990, locale="auto",
                    payment_method_types=["boleto"])
    assert 'lang="pt-BR"' in httpx.get(auto["url"], headers={"Accept-Language": "pt"}).text


async def test_sepa_mandate_must_be_accepted(services, merchant) -> None:
    cs = _session(merchant, currency="EUR", amount=4500, locale="en",
                  payment_method_types=["sepa_debit"])
    form = httpx.get(cs["url"]).text
    assert "By accepting this mandate" in form and 'name="mandate"' in form
    fields = {"name": "Erika Mustermann", "email": "erika@example.de",
              "iban": "DE89 3704 0044 0532 0130 00"}
    refused = _submit(cs["url"], "sepa_debit", fields)
    assert refused.status_code == 400 and "accept the mandate" in refused.text
    assert "0532 0130 00" not in refused.text  # the IBAN is never echoed back
    bad = _submit(cs["url"], "sepa_debit", {**fields, "iban": "DE89370400440532013009",
                                            "mandate": "accepted"})
    assert bad.status_code == 400 and "The IBAN is not valid" in bad.text
    ok = _submit(cs["url"], "sepa_debit", {**fields, "mandate": "accepted"},
                 headers={"User-Agent": "shop-browser/1.0"})
    assert ok.status_code == 303
    html = httpx.get(cs["url"]).text
    [pay] = await _session_payments(services, cs["id"])
    mandate = pay["payment_method"]["sepa_debit"]["mandate"]
    assert _field(html, "mandate_reference") == mandate["reference"]
    assert mandate["customer_acceptance"]["user_agent"] == "shop-browser/1.0"
    assert mandate["customer_acceptance"]["ip"]
    assert "DE89370400440532013000" not in html and "•••• 3000" in html
    session = _get(merchant, cs["id"])
    assert session["status"] == "open" and _seconds(session["expires_at"]) == pay["settles_at"]
    merchant.raw().post(f"/v1/test_helpers/payments/{pay['id']}/settle", {})
    assert _get(merchant, cs["id"])["status"] == "complete"


async def test_voucher_expiry_inside_a_session(services, merchant) -> None:
    """The voucher's deadline cancels it as ``expired`` (not the session's ``abandoned``), and
    the session, held open until then, expires with it."""
    cs = _session(merchant, expires_in_seconds=1800)
    res = _submit(cs["url"], "konbini", {"name": "花子", "email": "h@example.jp"})
    assert res.status_code == 303
    [pay] = await _session_payments(services, cs["id"])
    assert _seconds(_get(merchant, cs["id"])["expires_at"]) == pay["expires_at"]
    merchant.raw().post("/v1/test_helpers/clock/advance", {"seconds": 5 * DAY})

    def expired() -> dict[str, Any]:
        got = _get(merchant, cs["id"])
        assert got["status"] == "expired"
        return got

    eventually(expired, timeout_s=10)
    await asyncio.sleep(0.3)
    [pay] = await _session_payments(services, cs["id"])
    assert pay["status"] == "canceled" and pay["cancellation_reason"] == "expired"
    events = merchant.raw().get(
        f"/v1/events?type=payment.canceled&object_id={pay['id']}").json()["data"]
    assert len(events) == 1
    assert "期限切れ" in httpx.get(cs["url"], headers={"Accept-Language": "ja"}).text
