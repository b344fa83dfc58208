"""Refunds: the sum of refunds that are not failed or canceled never exceeds what was received.

The payment row is locked (PostgreSQL ``FOR UPDATE``; SQLite's single writer) while the
refund is reserved against it, so any number of concurrent refunds add up correctly.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert, select

from openpse.connectors.base import ConnectorResult, Outcome
from openpse.domain import ledger
from openpse.domain.errors import InvalidRequest
from openpse.domain.money import parse_amount
from openpse.domain.payments import Status
from openpse.services.context import Caller, Services
from openpse.services.events import changed_fields, record_event
from openpse.services.payments import (
    DEFAULT_CONNECTOR,
    _new_attempt,
    _recovery_point,
    validate_metadata,
)
from openpse.services.views import payment_view, refund_view
from openpse.storage.db import Tx
from openpse.storage.ledger import post_journal
from openpse.storage.repos import load_scoped, update_versioned
from openpse.storage.rows import apply_page, page_result, row_dict
from openpse.storage.tables import payment_attempts, payments, refunds

__all__ = ["REFUND_REASONS", "REFUND_WINDOW_S", "create_refund", "get_refund", "list_refunds"]

REFUND_REASONS = ("duplicate", "fraudulent", "requested_by_customer")
# How long after capture a payment method can be refunded through its network.
REFUND_WINDOW_S = {"card": 180 * 86400}
DEFAULT_REFUND_WINDOW_S = 180 * 86400


async def create_refund(svc: Services, caller: Caller, payment_id: str, amount: Any = None,
                        reason: str | None = None, metadata: Any = None) -> dict[str, Any]:
    if caller.resume_resource_id:
        return await _resume(svc, caller, caller.resume_resource_id)
    if reason is not None and reason not in REFUND_REASONS:
        raise InvalidRequest(f"reason must be one of {', '.join(REFUND_REASONS)}", param="reason")
    md = validate_metadata(metadata)
    now = svc.now()
    async with svc.db.transaction() as tx:
        pay = await load_scoped(tx, payments, payment_id, merchant_id=caller.merchant_id,
                                livemode=caller.livemode, lock=True, what="payment",
                                param="payment")
        amt = _check_refundable(pay, amount, now)
        refund = {
            "id": _new_id(), "merchant_id": caller.merchant_id, "livemode": caller.livemode,
            "payment_id": payment_id, "amount": amt, "currency": pay["currency"],
            "status": "pending", "reason": reason, "metadata": md, "failure_code": None,
            "failure_message": None, "destination": None, "created": now, "updated": now,
            "version": 1,
        }
        await tx.execute(insert(refunds).values(**refund))
        before = payment_view(pay)
        pay = await update_versioned(tx, payments, pay,
                                     {"amount_refunded": pay["amount_refunded"] + amt}, now=now)
        await record_event(tx, caller=caller, merchant_id=caller.merchant_id,
                           livemode=caller.livemode, type="refund.created",
                           obj=refund_view(refund), previous=None, now=now)
        after = payment_view(pay)
        await record_event(tx, caller=caller, merchant_id=caller.merchant_id,
                           livemode=caller.livemode, type="payment.refund_pending", obj=after,
                           previous=changed_fields(before, after), now=now)
        attempt_id = await _new_attempt(tx, pay, "refund", amt, now, refund_id=refund["id"])
        await _recovery_point(tx, caller, refund["id"])
    return await _execute(svc, caller, refund, pay, attempt_id)


def _new_id() -> str:
    from openpse.domain.ids import new_id

    return new_id("re_")


def _check_refundable(pay: dict[str, Any], amount: Any, now: int) -> int:
    if pay["status"] != Status.SUCCEEDED:
        raise InvalidRequest(
            f"payment {pay['id']} is {pay['status']}; only succeeded payments can be refunded "
            "(cancel it instead if it was not captured)", code="payment_invalid_state",
            param="payment")
    remaining = pay["amount_received"] - pay["amount_refunded"]
    amt = remaining if amount is None else parse_amount(amount, pay["currency"])
    if amt > remaining or amt <= 0:
        raise InvalidRequest(
            f"refund amount {amt} is more than the {remaining} {pay['currency']} left to refund "
            f"on payment {pay['id']} (received {pay['amount_received']}, already refunded or "
            f"pending {pay['amount_refunded']})", code="amount_too_large", param="amount")
    window = REFUND_WINDOW_S.get(pay["payment_method_type"] or "card", DEFAULT_REFUND_WINDOW_S)
    if pay["captured_at"] is not None and now > pay["captured_at"] + window:
        raise InvalidRequest(
            f"payment {pay['id']} was captured more than {window // 86400} days ago; its "
            "refund window has closed", code="refund_window_expired", param="payment")
    return amt


async def _execute(svc: Services, caller: Caller | None, refund: dict[str, Any],
                   pay: dict[str, Any], attempt_id: str) -> dict[str, Any]:
    connector = svc.connectors[pay["connector"] or DEFAULT_CONNECTOR]
    try:
        result = await connector.refund(attempt_id, pay["connector_reference"] or "",
                                        refund["amount"], refund["currency"])
    except Exception as exc:
        result = ConnectorResult(Outcome.PENDING, message=f"connector error: {type(exc).__name__}")
    return await apply_refund_result(svc, caller, refund["id"], attempt_id, result)


async def apply_refund_result(svc: Services, caller: Caller | None, refund_id: str,
                              attempt_id: str, result: ConnectorResult) -> dict[str, Any]:
    now = svc.now()
    async with svc.db.transaction() as tx:
        ref = row_dict((await tx.execute(select(refunds).where(refunds.c.id == refund_id)))
                       .first())
        attempt = (await tx.execute(select(payment_attempts).where(
            payment_attempts.c.id == attempt_id))).first()
        if result.outcome == Outcome.PENDING or ref["status"] != "pending" or (
                attempt is not None and attempt.status != "pending"):
            return refund_view(ref)
        from sqlalchemy import update

        ok = result.outcome == Outcome.SUCCEEDED
        await tx.execute(update(payment_attempts).where(payment_attempts.c.id == attempt_id)
                         .values(status="succeeded" if ok else "failed", updated=now,
                                 connector_reference=result.connector_reference,
                                 error_code=result.decline_code))
        return await _finish(tx, caller, ref, ok, result, now)


async def _finish(tx: Tx, caller: Caller | None, ref: dict[str, Any], ok: bool,
                  result: ConnectorResult, now: int) -> dict[str, Any]:
    m, cur, lm = ref["merchant_id"], ref["currency"], bool(ref["livemode"])
    pay = await load_scoped(tx, payments, ref["payment_id"], merchant_id=m, livemode=lm,
                            lock=True, what="payment")
    before_ref = refund_view(ref)
    if ok:
        await post_journal(tx, merchant_id=m, livemode=lm, kind="refund", reference_id=ref["id"],
                           entries=ledger.refund(m, cur, ref["amount"]), now=now)
        new = await update_versioned(tx, refunds, ref, {"status": "succeeded"}, now=now)
        etype = "refund.succeeded"
        before_pay = payment_view(pay)
        pay = await update_versioned(tx, payments, pay, {}, now=now)
        after_pay = payment_view(pay)
        await record_event(tx, caller=caller, merchant_id=m, livemode=lm,
                           type="payment.refunded", obj=after_pay,
                           previous=changed_fields(before_pay, after_pay), now=now)
    else:
        new = await update_versioned(tx, refunds, ref, {
            "status": "failed", "failure_code": result.decline_code or "refund_failed",
            "failure_message": result.message}, now=now)
        etype = "refund.failed"
        await update_versioned(tx, payments, pay,
                               {"amount_refunded": pay["amount_refunded"] - ref["amount"]},
                               now=now)
    after = refund_view(new)
    await record_event(tx, caller=caller, merchant_id=m, livemode=lm, type=etype, obj=after,
                       previous=changed_fields(before_ref, after), now=now)
    return after


async def _resume(svc: Services, caller: Caller, refund_id: str) -> dict[str, Any]:
    async with svc.db.read() as conn:
        ref = await load_scoped(conn, refunds, refund_id, merchant_id=caller.merchant_id,
                                livemode=caller.livemode, what="refund")
        attempt = (await conn.execute(select(payment_attempts).where(
            payment_attempts.c.refund_id == refund_id,
            payment_attempts.c.status == "pending"))).first()
        pay = await load_scoped(conn, payments, ref["payment_id"], merchant_id=caller.merchant_id,
                                livemode=caller.livemode, what="payment")
    if ref["status"] == "pending" and attempt is not None:
        return await _execute(svc, caller, ref, pay, attempt.id)
    return refund_view(ref)


async def get_refund(svc: Services, caller: Caller, refund_id: str) -> dict[str, Any]:
    async with svc.db.read() as conn:
        return refund_view(await load_scoped(conn, refunds, refund_id,
                                             merchant_id=caller.merchant_id,
                                             livemode=caller.livemode, what="refund"))


async def list_refunds(svc: Services, caller: Caller, *, payment: str | None, status: str | None,
                       limit: int, cursor: str | None, created_gte: int | None,
                       created_lt: int | None) -> dict[str, Any]:
    stmt = select(refunds).where(refunds.c.merchant_id == caller.merchant_id,
                                 refunds.c.livemode == caller.livemode)
    if payment:
        stmt = stmt.where(refunds.c.payment_id == payment)
    if status:
        stmt = stmt.where(refunds.c.status == status)
    stmt = apply_page(stmt, refunds, limit=limit, cursor=cursor, created_gte=created_gte,
                      created_lt=created_lt)
    async with svc.db.read() as conn:
        rows = [refund_view(row_dict(r)) for r in (await conn.execute(stmt)).all()]
    return page_result(rows, limit)


async def resolve_refund_attempt(svc: Services, attempt: Any) -> None:
    """Finish a refund left pending by a crash (the worker's sync job)."""
    connector = svc.connectors[attempt.connector]
    result = await connector.sync(attempt.id)
    if result is None:
        async with svc.db.read() as conn:
            ref = row_dict((await conn.execute(select(refunds).where(
                refunds.c.id == attempt.refund_id))).first())
            pay = row_dict((await conn.execute(select(payments).where(
                payments.c.id == ref["payment_id"]))).first())
        await _execute(svc, None, ref, pay, attempt.id)
        return
    await apply_refund_result(svc, None, attempt.refund_id, attempt.id, result)
