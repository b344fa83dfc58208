"""A payment's confirm, capture and cancel store their answer with the request's
Idempotency-Key in the transaction of their last state change (as a create+confirm does), so
a process that dies before sending it leaves a key that replays it; over HTTP their claim is
written in the action's own first transaction and a retry with the key replays byte for byte
without acting twice."""

from __future__ import annotations

import uuid
from typing import Any

import orjson

from openpse.api.errors import JSON_CONTENT_TYPE
from openpse.api.idempotency import Replay
from openpse.services import payments as svc_payments
from openpse.services.context import Caller
from tests.support.answers import answering_caller
from tests.support.ledger import VISA, acquirer_operations, payment_body


def _card() -> svc_payments.CardInput:
    return svc_payments.CardInput(VISA, 12, 2034, "123")


async def _payment(services: Any, shop: Caller, *, confirm: bool = True,
                   capture_method: str = "manual") -> dict[str, Any]:
    view, _ = await svc_payments.create_payment(services, shop, {
        "amount": 1500, "currency": "USD", "merchant_order_id": uuid.uuid4().hex,
        "confirm": confirm, "capture_method": capture_method,
        "payment_method": {"type": "card"}}, _card())
    return dict(view)


async def _stored_and_replayed(services: Any, shop: Caller, action: str, pid: str,
                               act: Any) -> dict[str, Any]:
    key = uuid.uuid4().hex
    path = f"/v1/payments/{pid}/{action}"
    caller, got, store = await answering_caller(services, shop.merchant_id, key, path)
    out = await act(caller)
    assert got.stored == (200, {"content-type": JSON_CONTENT_TYPE}, orjson.dumps(out)), action
    replay = await store.begin(merchant_id=shop.merchant_id, livemode=False, key=key,
                               method="POST", path=path, req_hash="h-" + key,
                               now=services.now())
    assert isinstance(replay, Replay) and (replay.status, replay.body) == (
        200, orjson.dumps(out))
    return dict(out)


async def test_confirm_capture_and_cancel_store_their_answer_in_their_transaction(
        services: Any, shop: Caller) -> None:
    held = await _payment(services, shop)
    out = await _stored_and_replayed(services, shop, "capture", held["id"], lambda c:
                                     svc_payments.capture_payment(services, c, held["id"]))
    assert out["status"] == "succeeded"
    voided = await _payment(services, shop)
    out = await _stored_and_replayed(services, shop, "cancel", voided["id"], lambda c:
                                     svc_payments.cancel_payment(services, c, voided["id"]))
    assert out["status"] == "canceled"
    unconfirmed = await _payment(services, shop, confirm=False)
    out = await _stored_and_replayed(services, shop, "cancel", unconfirmed["id"], lambda c:
                                     svc_payments.cancel_payment(services, c,
                                                                 unconfirmed["id"]))
    assert out["status"] == "canceled"  # nothing held at the acquirer: no void
    to_confirm = await _payment(services, shop, confirm=False)
    out = await _stored_and_replayed(services, shop, "confirm", to_confirm["id"], lambda c:
                                     svc_payments.confirm_payment(services, c,
                                                                  to_confirm["id"]))
    assert out["status"] == "requires_capture"


async def test_a_capture_retried_with_its_key_replays_and_captures_once(merchant: Any,
                                                                        services: Any) -> None:
    raw = merchant.raw()
    paid = raw.post("/v1/payments", payment_body(VISA, amount=1000, capture_method="manual"))
    assert paid.status_code == 201 and paid.json()["status"] == "requires_capture", paid.text
    pid = paid.json()["id"]
    key = {"Idempotency-Key": str(uuid.uuid4())}
    first = raw.post(f"/v1/payments/{pid}/capture", {"amount": 600}, headers=key)
    assert first.status_code == 200 and first.json()["amount_received"] == 600, first.text
    again = raw.post(f"/v1/payments/{pid}/capture", {"amount": 600}, headers=key)
    assert again.status_code == 200 and again.content == first.content
    assert again.headers["idempotent-replayed"] == "true"
    refused_key = {"Idempotency-Key": str(uuid.uuid4())}
    refused = raw.post(f"/v1/payments/{pid}/cancel", {}, headers=refused_key)
    assert refused.status_code == 409, refused.text  # captured: nothing to cancel
    refused_again = raw.post(f"/v1/payments/{pid}/cancel", {}, headers=refused_key)
    assert refused_again.content == refused.content
    assert refused_again.headers["idempotent-replayed"] == "true"
    ops = [o["operation"] for o in await acquirer_operations(services, pid)]
    assert ops.count("capture") == 1
