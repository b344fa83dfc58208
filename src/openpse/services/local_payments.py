"""What happens to a local-method payment after it is confirmed: money arriving (a voucher paid,
a transfer funded), a SEPA debit settling or being returned, and the deadlines the worker keeps
(expiry, the expiring-soon warning, debit settlement).

Every change locks the payment row, re-checks its state and goes through ``change_status`` (the
transition table) with its ledger journal and event in the same transaction, so two workers, or
a worker and a helper call, never apply one thing twice. Money that arrives for a payment that
can no longer take it (expired, canceled) is never accepted and never lost: it is booked to the
suspense account ``unapplied_funds``, recorded in ``review_items``, and the caller gets a 409.

In this build the sandbox helpers (``pay_voucher``, ``fund``, ``settle``, ``fail``) play the
networks' notifications; a connector for a real network would call the same functions.
"""

from __future__ import annotations

import hmac
from typing import Any

from sqlalchemy import and_, select, update

from openpse.domain import ledger
from openpse.domain import local_methods as local_rules
from openpse.domain.errors import Conflict, DomainError, InvalidRequest, NotFound
from openpse.domain.payments import TERMINAL, Status
from openpse.logs import get_logger
from openpse.services.clock import merchant_now, offset_sql
from openpse.services.context import Caller, Services
from openpse.services.events import record_event
from openpse.services.payments import (
    _after_payment_change,
    _lock,
    _review,
    change_status,
    merchant_terms,
    release_part_payments,
)
from openpse.services.views import payment_view
from openpse.storage.db import Tx
from openpse.storage.ledger import post_journal
from openpse.storage.rows import rfc3339, row_dict
from openpse.storage.tables import merchants, payments

__all__ = [
    "DEBIT_FAILURE_CODES",
    "expire_due_payments",
    "fail_debit",
    "fund_transfer",
    "load_voucher",
    "pay_voucher",
    "settle_debit",
    "settle_due_debits",
    "warn_expiring_payments",
]

BATCH = 100
DEBIT_FAILURE_CODES = tuple(code for code, _ in local_rules.SANDBOX_DEBIT_FAILURES.values())
_DEFAULT_FAILURE = "insufficient_funds"
log = get_logger("openpse.local_payments")


def _require_method(row: dict[str, Any], methods: frozenset[str] | set[str], helper: str) -> None:
    if row["payment_method_type"] not in methods:
        raise InvalidRequest(
            f"{helper} applies to {', '.join(sorted(methods))} payments; payment {row['id']} is "
            f"{row['payment_method_type'] or 'without a payment method'}",
            code="payment_method_mismatch")


def _past_deadline(row: dict[str, Any], clock: int) -> bool:
    return row["expires_at"] is not None and clock > row["expires_at"]


# ---- the shopper's hosted voucher page ----------------------------------------------------

async def load_voucher(svc: Services, payment_id: str, token: str | None
                       ) -> tuple[dict[str, Any], str]:
    """The payment behind ``/vouchers/{id}`` and its merchant's name; ``NotFound`` unless the
    token is the page's and the payment is a local method's."""
    expected = svc.page_token(f"voucher:{payment_id}")
    if not isinstance(token, str) or not hmac.compare_digest(token.encode(), expected.encode()):
        raise NotFound("no such voucher", code="resource_missing")
    async with svc.db.read() as conn:
        found = (await conn.execute(select(payments).where(payments.c.id == payment_id))).first()
        if found is None or found.payment_method_type not in local_rules.LOCAL_METHODS:
            raise NotFound("no such voucher", code="resource_missing")
        name = (await conn.execute(select(merchants.c.name).where(
            merchants.c.id == found.merchant_id))).scalar()
    return row_dict(found), name or ""


# ---- money arriving -----------------------------------------------------------------------

async def pay_voucher(svc: Services, caller: Caller, payment_id: str,
                      store: str | None = None) -> dict[str, Any]:
    """A voucher (konbini, pay_easy, boleto) paid in full at a store, ATM or bank."""
    if store is not None and store not in local_rules.KONBINI_STORES:
        raise InvalidRequest(f"store must be one of {', '.join(local_rules.KONBINI_STORES)}",
                             param="store")
    return await _arrive(svc, caller, payment_id, None, store)


async def fund_transfer(svc: Services, caller: Caller, payment_id: str, amount: Any
                        ) -> dict[str, Any]:
    """A bank transfer to the payment's virtual account; any amount, cumulative."""
    if isinstance(amount, bool) or not isinstance(amount, int) or not 1 <= amount <= \
            local_rules.AMOUNT_LIMITS["bank_transfer"]["JPY"][1]:
        raise InvalidRequest("amount must be a positive integer in the payment currency's minor "
                             "unit", code="invalid_amount", param="amount")
    return await _arrive(svc, caller, payment_id, amount, None)


async def _arrive(svc: Services, caller: Caller, payment_id: str, amount: int | None,
                  store: str | None) -> dict[str, Any]:
    now = svc.now()
    refusal: DomainError | None = None
    async with svc.db.transaction() as tx:
        row = await _lock(tx, caller, payment_id)
        transfer = amount is not None
        if transfer:
            _require_method(row, {"bank_transfer"}, "fund")
        else:
            _require_method(row, local_rules.VOUCHER_METHODS, "pay_voucher")
        incoming = amount if amount is not None else int(row["amount"])
        clock = await merchant_now(svc, tx, row["merchant_id"], bool(row["livemode"]))
        if row["status"] == Status.REQUIRES_ACTION and _past_deadline(row, clock):
            row = await _expire(tx, caller, row, now, clock)  # the worker had not got to it yet
        if row["status"] == Status.REQUIRES_ACTION:
            if transfer:
                row = await _apply_transfer(svc, tx, caller, row, incoming, now)
            else:
                row = await _apply_voucher(svc, tx, caller, row, store, now)
        elif row["status"] == Status.SUCCEEDED and transfer:  # more money, after the fact
            row = await _overpaid_after_success(tx, caller, row, incoming, now)
        elif row["status"] in (Status.CANCELED, Status.FAILED):
            refusal = await _late_funds(tx, row, incoming, now, clock)
        elif row["status"] == Status.SUCCEEDED:  # a voucher is paid once; a repeat is a fault
            review_id = await _review(tx, row, "duplicate_payment_notice", {
                "helper": "pay_voucher", "status_at_arrival": row["status"]}, now)
            refusal = Conflict(f"payment {payment_id} is already paid; a voucher is paid once "
                               f"(recorded for review as {review_id})",
                               code="payment_invalid_state", extra={"review_item": review_id})
        else:
            raise Conflict(f"payment {payment_id} is {row['status']}: confirm it first, so the "
                           "shopper has something to pay", code="payment_invalid_state")
    if refusal is not None:  # raised after the commit: the record of it must stay
        raise refusal
    return payment_view(row)


async def _apply_voucher(svc: Services, tx: Tx, caller: Caller | None, row: dict[str, Any],
                         store: str | None, now: int) -> dict[str, Any]:
    m, cur, amt, lm = row["merchant_id"], row["currency"], row["amount"], bool(row["livemode"])
    pricing, clock = await merchant_terms(svc, tx, row)
    fee = ledger.fee_for(pricing, row["payment_method_type"], cur, amt)
    await post_journal(tx, merchant_id=m, livemode=lm, kind="payment_received",
                       reference_id=row["id"],
                       entries=ledger.capture(m, cur, amt, fee, held=False), now=now)
    view = dict(row["payment_method"])
    if store is not None:
        kind = str(view["type"])
        view[kind] = {**view.get(kind, {}), "store": {"chain": store}}
    new = await change_status(tx, caller, row, Status.SUCCEEDED, {
        "amount_received": amt, "fee": fee, "captured_at": clock, "next_action": None,
        "payment_method": view}, now=now, action="pay")
    await _after_payment_change(tx, caller, new, now)
    return new


async def _apply_transfer(svc: Services, tx: Tx, caller: Caller | None, row: dict[str, Any],
                          incoming: int, now: int) -> dict[str, Any]:
    m, cur, amt, lm = row["merchant_id"], row["currency"], row["amount"], bool(row["livemode"])
    held = int(row["amount_received"])
    total = held + incoming
    if total < amt:  # under-paid so far: the money is held, the payment stays open
        await post_journal(tx, merchant_id=m, livemode=lm, kind="part_payment",
                           reference_id=row["id"], entries=ledger.move(
                               m, cur, incoming, "acquirer_receivable", "shopper_funds_held"),
                           now=now)
        action = {**row["next_action"], "amount_remaining": amt - total}
        new = await change_status(tx, caller, row, Status.REQUIRES_ACTION, {
            "amount_received": total, "next_action": action}, now=now, action="fund",
            event_type="payment.partially_funded")
    else:
        pricing, clock = await merchant_terms(svc, tx, row)
        fee = ledger.fee_for(pricing, "bank_transfer", cur, amt)
        await post_journal(tx, merchant_id=m, livemode=lm, kind="payment_received",
                           reference_id=row["id"], entries=ledger.funds_completing(
                               m, cur, incoming=incoming, held=held, amount=amt, fee=fee),
                           now=now)
        new = await change_status(tx, caller, row, Status.SUCCEEDED, {
            "amount_received": amt, "amount_overpaid": total - amt, "fee": fee,
            "captured_at": clock, "next_action": None}, now=now, action="fund")
    await _after_payment_change(tx, caller, new, now)
    return new


async def _overpaid_after_success(tx: Tx, caller: Caller | None, row: dict[str, Any],
                                  incoming: int, now: int) -> dict[str, Any]:
    m, cur = row["merchant_id"], row["currency"]
    await post_journal(tx, merchant_id=m, livemode=bool(row["livemode"]), kind="overpayment",
                       reference_id=row["id"], entries=ledger.move(
                           m, cur, incoming, "acquirer_receivable", "overpayments_payable"),
                       now=now)
    return await change_status(tx, caller, row, Status.SUCCEEDED, {
        "amount_overpaid": int(row["amount_overpaid"]) + incoming}, now=now, action="fund",
        event_type="payment.overpaid")


async def _late_funds(tx: Tx, row: dict[str, Any], incoming: int, now: int,
                      clock: int) -> Conflict:
    """Money for a payment that can no longer take it: suspense, review, and a 409 to say so."""
    m, cur = row["merchant_id"], row["currency"]
    await post_journal(tx, merchant_id=m, livemode=bool(row["livemode"]), kind="unapplied_funds",
                       reference_id=row["id"], entries=ledger.move(
                           m, cur, incoming, "acquirer_receivable", "unapplied_funds"), now=now)
    expired = row["cancellation_reason"] == "expired"
    review_id = await _review(tx, row, "payment_after_expiry" if expired else
                              "payment_after_cancel", {
                                  "amount": incoming, "currency": cur,
                                  "method": row["payment_method_type"],
                                  "status_at_arrival": row["status"],
                                  "cancellation_reason": row["cancellation_reason"],
                                  "received_at": rfc3339(clock),
                                  "held_in": "unapplied_funds"}, now)
    log.warning("money arrived for a closed payment", payment=row["id"], review_item=review_id)
    what = "expired" if expired else row["status"]
    return Conflict(
        f"payment {row['id']} is {what}: the {incoming} {cur} that arrived for it were not "
        f"applied. They are held as unapplied funds and recorded for review ({review_id}) so "
        "they can be returned to the shopper.",
        code="payment_expired" if expired else "payment_invalid_state",
        extra={"review_item": review_id, "payment": payment_view(row)})


# ---- SEPA Direct Debit: settlement or return ---------------------------------------------

async def settle_debit(svc: Services, caller: Caller, payment_id: str) -> dict[str, Any]:
    return await _debit_answer(svc, caller, payment_id, None)


async def fail_debit(svc: Services, caller: Caller, payment_id: str,
                     failure_code: str | None = None) -> dict[str, Any]:
    code = failure_code or _DEFAULT_FAILURE
    if code not in DEBIT_FAILURE_CODES:
        raise InvalidRequest(f"failure_code must be one of {', '.join(DEBIT_FAILURE_CODES)}",
                             param="failure_code")
    return await _debit_answer(svc, caller, payment_id, code)


def _failure(code: str) -> tuple[str, str]:
    for known, message in local_rules.SANDBOX_DEBIT_FAILURES.values():
        if known == code:
            return known, message
    return code, "The shopper's bank returned the debit."


async def _debit_answer(svc: Services, caller: Caller, payment_id: str,
                        failure_code: str | None) -> dict[str, Any]:
    now = svc.now()
    refusal: DomainError | None = None
    async with svc.db.transaction() as tx:
        row = await _lock(tx, caller, payment_id)
        _require_method(row, {"sepa_debit"}, "settle" if failure_code is None else "fail")
        if row["status"] == Status.PROCESSING:
            failure = _failure(failure_code) if failure_code else None
            clock = await merchant_now(svc, tx, row["merchant_id"], bool(row["livemode"]))
            row = await _finish_debit(svc, tx, caller, row, failure, now, clock)
        elif row["status"] in TERMINAL:  # never overwritten; a person looks at it
            review_id = await _review(tx, row, "late_network_answer", {
                "answer": "settled" if failure_code is None else failure_code,
                "status_at_arrival": row["status"]}, now)
            refusal = Conflict(
                f"payment {payment_id} is {row['status']} (a final state); the bank's answer was "
                f"recorded for review ({review_id}) and not applied",
                code="payment_invalid_state", extra={"review_item": review_id})
        else:
            raise Conflict(f"payment {payment_id} is {row['status']}: a debit is settled or "
                           "returned only while processing", code="payment_invalid_state")
    if refusal is not None:
        raise refusal
    return payment_view(row)


async def _finish_debit(svc: Services, tx: Tx, caller: Caller | None, row: dict[str, Any],
                        failure: tuple[str, str] | None, now: int, clock: int) -> dict[str, Any]:
    m, cur, amt, lm = row["merchant_id"], row["currency"], row["amount"], bool(row["livemode"])
    if failure is None:
        pricing, _ = await merchant_terms(svc, tx, row)
        fee = ledger.fee_for(pricing, "sepa_debit", cur, amt)
        await post_journal(tx, merchant_id=m, livemode=lm, kind="debit_settled",
                           reference_id=row["id"],
                           entries=ledger.debit_settled(m, cur, amt, fee), now=now)
        new = await change_status(tx, caller, row, Status.SUCCEEDED, {
            "amount_received": amt, "fee": fee, "captured_at": clock}, now=now, action="settle")
    else:
        await post_journal(tx, merchant_id=m, livemode=lm, kind="debit_failed",
                           reference_id=row["id"], entries=ledger.debit_failed(m, cur, amt),
                           now=now)
        new = await change_status(tx, caller, row, Status.FAILED, {
            "failure_code": failure[0], "failure_message": failure[1]}, now=now, action="fail")
    await _after_payment_change(tx, caller, new, now)
    return new


# ---- deadlines (worker jobs) ---------------------------------------------------------------

async def _expire(tx: Tx, caller: Caller | None, row: dict[str, Any], now: int,
                  clock: int) -> dict[str, Any]:
    await release_part_payments(tx, row, now, "expired")
    new = await change_status(tx, caller, row, Status.CANCELED, {
        "cancellation_reason": "expired", "canceled_at": clock, "next_action": None},
        now=now, action="expire")
    await _after_payment_change(tx, caller, new, now)
    return new


def _due(deadline_col: Any, now_s: int, *conds: Any) -> Any:
    """Payments whose ``deadline_col`` has passed on their merchant's clock."""
    p = payments.c
    return (select(p.id, p.merchant_id, p.livemode)
            .select_from(payments.join(merchants, merchants.c.id == p.merchant_id))
            .where(deadline_col.is_not(None), deadline_col < now_s + offset_sql(p.livemode),
                   *conds)
            .order_by(deadline_col).limit(BATCH))


async def _clock_at(tx: Tx, merchant_id: str, livemode: bool, now_s: int) -> int:
    if livemode:
        return now_s
    offset = (await tx.execute(select(merchants.c.sandbox_clock_offset_s).where(
        merchants.c.id == merchant_id))).scalar()
    return now_s + int(offset or 0)


async def expire_due_payments(svc: Services, now_s: int) -> int:
    """Cancel unpaid vouchers and transfers past their deadline (``expired``); how many.

    Each in its own transaction, with the row locked and its state checked again: of two
    workers racing for one payment exactly one cancels it and writes ``payment.canceled``.
    """
    p = payments.c
    async with svc.db.read() as conn:
        due = (await conn.execute(_due(p.expires_at, now_s,
                                       p.status == Status.REQUIRES_ACTION))).all()
    done = 0
    for pid, merchant_id, livemode in due:
        scope = Caller(merchant_id, bool(livemode))
        async with svc.db.transaction() as tx:
            row = await _lock(tx, scope, pid)
            clock = await _clock_at(tx, merchant_id, bool(livemode), now_s)
            if row["status"] != Status.REQUIRES_ACTION or not _past_deadline(row, clock):
                continue  # paid, canceled or expired meanwhile
            await _expire(tx, None, row, now_s, clock)
        done += 1
    return done


async def warn_expiring_payments(svc: Services, now_s: int) -> int:
    """``payment.expiring_soon``, once per payment, ``payment_expiring_soon_s`` before expiry."""
    lead_s = svc.settings.payment_expiring_soon_s
    if lead_s <= 0:
        return 0
    p = payments.c
    clock_sql = now_s + offset_sql(p.livemode)
    stmt = (select(p.id, p.merchant_id, p.livemode)
            .select_from(payments.join(merchants, merchants.c.id == p.merchant_id))
            .where(p.status == Status.REQUIRES_ACTION, p.expires_at.is_not(None),
                   p.expiry_warned_at.is_(None), p.expires_at - lead_s <= clock_sql,
                   p.expires_at >= clock_sql)
            .order_by(p.expires_at).limit(BATCH))
    async with svc.db.read() as conn:
        due = (await conn.execute(stmt)).all()
    done = 0
    for pid, merchant_id, livemode in due:
        async with svc.db.transaction() as tx:
            clock = await _clock_at(tx, merchant_id, bool(livemode), now_s)
            res = await tx.execute(update(payments).where(and_(
                p.id == pid, p.status == Status.REQUIRES_ACTION, p.expiry_warned_at.is_(None)))
                .values(expiry_warned_at=clock))
            if res.rowcount != 1:
                continue  # another worker warned, or the payment moved on
            row = row_dict((await tx.execute(select(payments).where(p.id == pid))).one())
            await record_event(tx, caller=None, merchant_id=merchant_id, livemode=bool(livemode),
                               type="payment.expiring_soon", obj=payment_view(row),
                               previous=None, now=now_s)
        done += 1
    return done


async def settle_due_debits(svc: Services, now_s: int) -> int:
    """SEPA debits whose settlement date has come: the sandbox bank answers (a test IBAN ending
    in one of ``SANDBOX_DEBIT_FAILURES`` is returned: the late failure), exactly once."""
    p = payments.c
    async with svc.db.read() as conn:
        due = (await conn.execute(_due(p.settles_at, now_s, p.status == Status.PROCESSING,
                                       p.payment_method_type == "sepa_debit"))).all()
    done = 0
    for pid, merchant_id, livemode in due:
        scope = Caller(merchant_id, bool(livemode))
        async with svc.db.transaction() as tx:
            row = await _lock(tx, scope, pid)
            clock = await _clock_at(tx, merchant_id, bool(livemode), now_s)
            if row["status"] != Status.PROCESSING or row["settles_at"] is None or \
                    row["settles_at"] >= clock:
                continue
            last4 = str(((row["payment_method"] or {}).get("sepa_debit") or {}).get("last4"))
            await _finish_debit(svc, tx, None, row, local_rules.sandbox_debit_failure(last4),
                                now_s, clock)
        done += 1
    return done
