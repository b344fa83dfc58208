"""Refunds through the live server (CONTRACT §4 Refunds, §8; RELIABILITY 16): partial and
full, the amount never exceeding what was received, even under 20 concurrent requests."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

from sqlalchemy import func, select, update

from openpse.storage.tables import payments, refunds
from tests.support.api_asserts import assert_error
from tests.support.ledger import (
    DECLINED,
    VISA,
    acquirer_operations,
    journals_for,
    ledger_problems,
    merchant_balances,
    payment_body,
    payment_events,
)
from tests.support.signer import RawClient


def _paid(raw: Any, amount: int = 1000, **kw: Any) -> dict[str, Any]:
    res = raw.post("/v1/payments", payment_body(VISA, amount=amount, **kw))
    assert res.status_code == 201, res.text
    assert res.json()["status"] == "succeeded"
    return dict(res.json())


async def _refund_rows(services: Any, payment_id: str) -> int:
    async with services.db.read() as conn:
        return int((await conn.execute(select(func.count()).select_from(refunds).where(
            refunds.c.payment_id == payment_id))).scalar_one())


async def test_partial_then_full_refund(merchant, services):
    raw = merchant.raw()
    p = _paid(raw, 1000)
    r1 = raw.post("/v1/refunds", {"payment": p["id"], "amount": 300,
                                  "reason": "requested_by_customer"})
    assert r1.status_code == 201, r1.text
    ref = r1.json()
    assert ref["object"] == "refund" and ref["id"].startswith("re_")
    assert ref["status"] == "succeeded" and ref["amount"] == 300 and ref["currency"] == "USD"
    assert ref["payment"] == p["id"] and ref["reason"] == "requested_by_customer"
    pay = raw.get(f"/v1/payments/{p['id']}").json()
    assert pay["amount_refunded"] == 300 and pay["refunded"] is False
    assert pay["status"] == "succeeded" and pay["version"] > p["version"]
    rest = raw.post("/v1/refunds", {"payment": p["id"]})  # default: all that is left
    assert rest.status_code == 201, rest.text
    assert rest.json()["amount"] == 700
    pay = raw.get(f"/v1/payments/{p['id']}").json()
    assert pay["amount_refunded"] == 1000 and pay["refunded"] is True
    assert raw.get(f"/v1/refunds/{ref['id']}").json() == ref
    listed = raw.get(f"/v1/refunds?payment={p['id']}").json()["data"]
    assert sorted(r["amount"] for r in listed) == [300, 700]
    more = raw.post("/v1/refunds", {"payment": p["id"], "amount": 1})
    assert_error(more, 400, "invalid_request_error", "amount_too_large", param="amount")
    assert_error(raw.post("/v1/refunds", {"payment": p["id"]}), 400, "invalid_request_error",
                 "amount_too_large")
    for r in (ref, rest.json()):
        assert [j["kind"] for j in await journals_for(services, r["id"])] == ["refund"]
    bal = await merchant_balances(services, merchant.merchant_id)
    assert bal[("acquirer_receivable", "USD")] == 0
    assert bal[("merchant_pending", "USD")] == p["fee"]  # the fee is not given back
    evs = await payment_events(services, ref["id"])
    assert [e["type"] for e in evs] == ["refund.created", "refund.succeeded"]
    assert evs[-1]["data"]["previous_attributes"] == {"status": "pending"}
    pay_types = [e["type"] for e in await payment_events(services, p["id"])]
    assert pay_types.count("payment.refunded") == 2
    ops = [o for o in await acquirer_operations(services, p["id"]) if o["operation"] == "refund"]
    assert sorted(o["amount"] for o in ops) == [300, 700]
    assert not await ledger_problems(services)


async def test_a_refund_leaves_each_row_one_version_per_change_and_an_event_for_each(
        merchant, services):
    """A card refund's first transaction (the refund, the payment's reserved amount, two
    events, the attempt) and its answer's (the journal, both rows, two events) are each made
    together: every change still moves its row one version, and the stored rows are what the
    last events carry."""
    raw = merchant.raw()
    p = _paid(raw, 1000)
    res = raw.post("/v1/refunds", {"payment": p["id"], "amount": 300})
    assert res.status_code == 201, res.text
    ref = res.json()
    pay_evs = [e for e in await payment_events(services, p["id"])
               if e["data"]["object"]["version"] > p["version"]]
    assert [(e["type"], e["data"]["object"]["version"], e["data"]["object"]["amount_refunded"])
            for e in pay_evs] == [("payment.refund_pending", p["version"] + 1, 300),
                                  ("payment.refunded", p["version"] + 2, 300)]
    assert pay_evs[0]["data"]["previous_attributes"]["amount_refunded"] == 0
    assert raw.get(f"/v1/payments/{p['id']}").json() == pay_evs[-1]["data"]["object"]
    ref_evs = await payment_events(services, ref["id"])
    assert [(e["type"], e["data"]["object"]["status"]) for e in ref_evs] == [
        ("refund.created", "pending"), ("refund.succeeded", "succeeded")]
    assert raw.get(f"/v1/refunds/{ref['id']}").json() == ref == ref_evs[-1]["data"]["object"]
    assert not await ledger_problems(services)


async def test_refund_too_large_and_invalid_amounts_write_nothing(merchant, services):
    raw = merchant.raw()
    p = _paid(raw, 500)
    assert_error(raw.post("/v1/refunds", {"payment": p["id"], "amount": 501}), 400,
                 "invalid_request_error", "amount_too_large", param="amount")
    assert_error(raw.post("/v1/refunds", {"payment": p["id"], "amount": 1.5}), 400,
                 "invalid_request_error", "invalid_amount", param="amount")
    assert_error(raw.post("/v1/refunds", {"payment": p["id"], "amount": 100, "status": "x"}),
                 400, "invalid_request_error", "parameter_unknown", param="status")
    assert await _refund_rows(services, p["id"]) == 0
    assert raw.get(f"/v1/payments/{p['id']}").json() == p


async def test_refund_of_a_payment_that_did_not_succeed(merchant, services):
    raw = merchant.raw()
    held = raw.post("/v1/payments", payment_body(VISA, capture_method="manual")).json()
    failed = raw.post("/v1/payments", payment_body(DECLINED)).json()["error"]["payment"]
    unconfirmed = raw.post("/v1/payments", payment_body(VISA, confirm=False)).json()
    for p in (held, failed, unconfirmed):
        res = raw.post("/v1/refunds", {"payment": p["id"], "amount": 100})
        assert_error(res, 400, "invalid_request_error", "payment_invalid_state", param="payment")
        assert await _refund_rows(services, p["id"]) == 0
    assert_error(raw.post("/v1/refunds", {"payment": "pay_doesnotexist"}), 404,
                 "invalid_request_error", "resource_missing")


async def test_refund_of_a_partial_capture_is_bounded_by_what_was_received(merchant):
    raw = merchant.raw()
    p = raw.post("/v1/payments", payment_body(VISA, amount=1000, capture_method="manual")).json()
    assert raw.post(f"/v1/payments/{p['id']}/capture", {"amount": 400}).status_code == 200
    assert_error(raw.post("/v1/refunds", {"payment": p["id"], "amount": 401}), 400,
                 "invalid_request_error", "amount_too_large")
    res = raw.post("/v1/refunds", {"payment": p["id"]})
    assert res.status_code == 201 and res.json()["amount"] == 400


async def test_refund_window_expired(merchant, services):
    raw = merchant.raw()
    p = _paid(raw, 1000)
    ok = raw.post("/v1/refunds", {"payment": p["id"], "amount": 100})
    assert ok.status_code == 201, ok.text
    old = int(time.time()) - 181 * 86400
    async with services.db.transaction() as tx:
        await tx.execute(update(payments).where(payments.c.id == p["id"])
                         .values(captured_at=old))
    before = raw.get(f"/v1/payments/{p['id']}").json()
    res = raw.post("/v1/refunds", {"payment": p["id"], "amount": 100})
    assert_error(res, 400, "invalid_request_error", "refund_window_expired")
    assert await _refund_rows(services, p["id"]) == 1
    assert raw.get(f"/v1/payments/{p['id']}").json() == before
    async with services.db.transaction() as tx:  # just inside the window
        await tx.execute(update(payments).where(payments.c.id == p["id"])
                         .values(captured_at=int(time.time()) - 179 * 86400))
    assert raw.post("/v1/refunds", {"payment": p["id"], "amount": 100}).status_code == 201


async def test_twenty_concurrent_refunds(merchant, services):
    """20 refunds of 100 against a payment of 1000, at once: exactly 10 succeed."""
    p = _paid(merchant.raw(), 1000, order="concurrent-refunds")
    n = 20
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n

    def worker(i: int) -> None:
        client = RawClient(merchant.base_url, merchant.access_key, merchant.secret)
        barrier.wait()
        results[i] = client.post("/v1/refunds", {"payment": p["id"], "amount": 100})

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    statuses = Counter(r.status_code for r in results)
    assert statuses == {201: 10, 400: 10}, [(r.status_code, r.text[:200]) for r in results]
    for r in results:
        if r.status_code == 400:
            assert_error(r, 400, "invalid_request_error", "amount_too_large")
        else:
            assert r.json()["status"] == "succeeded" and r.json()["amount"] == 100
    pay = merchant.raw().get(f"/v1/payments/{p['id']}").json()
    assert pay["amount_refunded"] == 1000 and pay["refunded"] is True
    assert await _refund_rows(services, p["id"]) == 10
    ops = [o for o in await acquirer_operations(services, p["id"]) if o["operation"] == "refund"]
    assert len(ops) == 10
    refund_ids = {r.json()["id"] for r in results if r.status_code == 201}
    for rid in refund_ids:
        assert [j["kind"] for j in await journals_for(services, rid)] == ["refund"]
    bal = await merchant_balances(services, merchant.merchant_id)
    assert bal[("acquirer_receivable", "USD")] == 0
    assert not await ledger_problems(services)
