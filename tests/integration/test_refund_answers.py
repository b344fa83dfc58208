"""A refund's answer (``refunds.apply_refund_result``), as a payment's is
(``test_answer_races.py``): on PostgreSQL read without a lock and written as one statement
that checks the payment's and the refund's versions and the attempt's ``pending`` itself,
taking the payment's row first as the locked path does; answers racing for one refund post
it once; the request's answer is stored with its Idempotency-Key in the answer's
transaction; and the refund route's claim is written in the refund's own transaction."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import orjson
import pytest
from sqlalchemy import func, select, update

from openpse.api.errors import JSON_CONTENT_TYPE
from openpse.api.idempotency import Replay
from openpse.connectors.base import ConnectorResult, Outcome
from openpse.services import payments as svc_payments
from openpse.services import refunds as svc_refunds
from openpse.services.context import Caller
from openpse.storage.tables import events, payment_attempts, payments, refunds
from tests.support.answers import answering_caller, until_it_waits_for_a_lock
from tests.support.api_asserts import assert_error
from tests.support.ledger import (
    VISA,
    ProcessDied,
    acquirer_acts_then_dies,
    journals_for,
    ledger_problems,
    payment_body,
)


async def _unanswered_refund(services: Any, shop: Caller, monkeypatch: Any, order: str
                             ) -> tuple[str, str, str]:
    """A refund the acquirer made whose answer was never applied: (payment, refund, attempt).
    A first refund is answered before: the merchant's ledger accounts exist and are cached."""
    view, _ = await svc_payments.create_payment(services, shop, {
        "amount": 5000, "currency": "USD", "merchant_order_id": order, "confirm": True,
        "capture_method": "automatic", "payment_method": {"type": "card"}},
        svc_payments.CardInput(VISA, 12, 2034, "123"))
    await svc_refunds.create_refund(services, shop, view["id"], 100)
    acquirer_acts_then_dies(services, monkeypatch, ProcessDied, "refund")
    with pytest.raises(ProcessDied):
        await svc_refunds.create_refund(services, shop, view["id"], 500)
    monkeypatch.undo()
    async with services.db.read() as conn:
        row = (await conn.execute(
            select(refunds.c.id, payment_attempts.c.id.label("att"))
            .join(payment_attempts, payment_attempts.c.refund_id == refunds.c.id)
            .where(refunds.c.payment_id == view["id"], refunds.c.status == "pending",
                   payment_attempts.c.status == "pending"))).one()
    return view["id"], row.id, row.att


def _answer(services: Any, refund_id: str, attempt_id: str) -> Any:
    return svc_refunds.apply_refund_result(
        services, None, refund_id, attempt_id,
        ConnectorResult(Outcome.SUCCEEDED, connector_reference=f"re_{attempt_id}"))


async def _refunded_once(services: Any, payment_id: str, refund_id: str) -> None:
    async with services.db.read() as conn:
        status = (await conn.execute(select(refunds.c.status).where(
            refunds.c.id == refund_id))).scalar_one()
        n_events = (await conn.execute(select(func.count()).select_from(events).where(
            events.c.object_id == refund_id, events.c.type == "refund.succeeded"))).scalar_one()
        refunded = (await conn.execute(select(payments.c.amount_refunded).where(
            payments.c.id == payment_id))).scalar_one()
    assert status == "succeeded" and n_events == 1 and refunded == 600
    assert [j["kind"] for j in await journals_for(services, refund_id)] == ["refund"]
    assert not await ledger_problems(services)


async def test_answers_racing_for_one_refund_post_it_once(services: Any, shop: Caller,
                                                         monkeypatch: Any) -> None:
    for i in range(3):
        payment_id, refund_id, attempt_id = await _unanswered_refund(
            services, shop, monkeypatch, f"refund-race-{i}")
        outs = await asyncio.gather(*(_answer(services, refund_id, attempt_id)
                                      for _ in range(3)))
        assert [o["status"] for o in outs] == ["succeeded"] * 3
        await _refunded_once(services, payment_id, refund_id)


async def test_the_lone_refund_answer_takes_the_payment_first_as_the_locked_path_does(
        services: Any, shop: Caller, monkeypatch: Any) -> None:
    """Another transaction holds the payment's row (as a refund's creation and the locked
    answer do, first) while the answer's statement runs, then updates the refund and the
    attempt and commits: taken in another order the two would deadlock; in this one the
    statement waits, misses the versions it read and the answer is applied under the lock."""
    payment_id, refund_id, attempt_id = await _unanswered_refund(
        services, shop, monkeypatch, "refund-lock-order")
    async with services.db.transaction() as other:
        await other.execute(select(payments.c.id).where(payments.c.id == payment_id)
                            .with_for_update())
        answer = asyncio.create_task(_answer(services, refund_id, attempt_id))
        await until_it_waits_for_a_lock(services, answer)
        await other.execute(update(refunds).where(refunds.c.id == refund_id).values(
            version=refunds.c.version + 1, reason="requested_by_customer"))
        await other.execute(update(payment_attempts).where(payment_attempts.c.id == attempt_id)
                            .values(updated=payment_attempts.c.updated + 1))
        await other.execute(update(payments).where(payments.c.id == payment_id)
                            .values(version=payments.c.version + 1))
    out = await asyncio.wait_for(answer, 30)
    assert out["status"] == "succeeded" and out["reason"] == "requested_by_customer"
    await _refunded_once(services, payment_id, refund_id)


async def test_a_refunds_answer_is_stored_with_its_key_in_the_answers_transaction(
        services: Any, shop: Caller) -> None:
    """A process that dies after the refund's answer committed, before sending it, leaves a
    key that replays that answer."""
    view, _ = await svc_payments.create_payment(services, shop, {
        "amount": 2000, "currency": "USD", "merchant_order_id": "refund-answer",
        "confirm": True, "capture_method": "automatic", "payment_method": {"type": "card"}},
        svc_payments.CardInput(VISA, 12, 2034, "123"))
    key = f"refund-{uuid.uuid4().hex}"
    caller, got, store = await answering_caller(services, shop.merchant_id, key, "/v1/refunds")
    refund = await svc_refunds.create_refund(services, caller, view["id"], 700)
    assert refund["status"] == "succeeded"
    assert got.stored == (201, {"content-type": JSON_CONTENT_TYPE}, orjson.dumps(refund))
    replay = await store.begin(merchant_id=shop.merchant_id, livemode=False, key=key,
                               method="POST", path="/v1/refunds", req_hash="h-" + key,
                               now=services.now())
    assert isinstance(replay, Replay) and (replay.status, replay.body) == (
        201, orjson.dumps(refund))


async def test_a_refund_retried_with_its_key_replays_and_refunds_once(merchant: Any,
                                                                      services: Any) -> None:
    """Over HTTP, the route's claim written in the refund's transaction: the same key replays
    the same bytes (a success and a refusal alike) and one refund is made."""
    raw = merchant.raw()
    paid = raw.post("/v1/payments", payment_body(VISA, amount=1000, order="refund-replay"))
    assert paid.status_code == 201, paid.text
    pid = paid.json()["id"]
    key = {"Idempotency-Key": str(uuid.uuid4())}
    first = raw.post("/v1/refunds", {"payment": pid, "amount": 300}, headers=key)
    assert first.status_code == 201, first.text
    again = raw.post("/v1/refunds", {"payment": pid, "amount": 300}, headers=key)
    assert again.status_code == 201 and again.content == first.content
    assert again.headers["idempotent-replayed"] == "true"
    refused_key = {"Idempotency-Key": str(uuid.uuid4())}
    refused = raw.post("/v1/refunds", {"payment": pid, "amount": 701}, headers=refused_key)
    assert_error(refused, 400, "invalid_request_error", "amount_too_large", param="amount")
    refused_again = raw.post("/v1/refunds", {"payment": pid, "amount": 701},
                             headers=refused_key)
    assert refused_again.content == refused.content
    assert refused_again.headers["idempotent-replayed"] == "true"
    async with services.db.read() as conn:
        rows = (await conn.execute(select(refunds.c.amount).where(
            refunds.c.payment_id == pid))).scalars().all()
    assert rows == [300]
    assert raw.get(f"/v1/payments/{pid}").json()["amount_refunded"] == 300
