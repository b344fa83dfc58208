"""Refunds: the sum of refunds that are not failed or canceled never exceeds what was received.

The payment row is locked (PostgreSQL ``FOR UPDATE``; SQLite's single writer) while the
refund is reserved against it, so any number of concurrent refunds add up correctly.

Card refunds go back through the acquirer. Methods without a card network (konbini, pay_easy,
bank_transfer, boleto) are refunded by bank transfer to an account the merchant gives in
``destination`` (the shopper's); SEPA debits are refunded to the debited IBAN. These refunds are
booked when accepted (``refunds_payable``) and stay ``pending`` until the payout is made: by
the worker's ``pay_out_refunds`` job at ``completes_at`` (the merchant's clock), or at once by
the sandbox helper. An over-paid transfer's excess is refunded with ``source: overpayment``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert, select

from openpse.connectors.base import ConnectorResult, Outcome
from openpse.domain import bank_details, ledger
from openpse.domain import local_methods as local_rules
from openpse.domain.errors import Conflict, InvalidRequest
from openpse.domain.ids import new_id
from openpse.domain.money import parse_amount
from openpse.domain.payments import Status
from openpse.services.clock import clock_at, offset_sql
from openpse.services.context import Caller, Services
from openpse.services.events import Held, changed_fields, flush, record_event
from openpse.services.payments import (
    DEFAULT_CONNECTOR,
    _attempt_row,
    _recovery_point,
    unlocked_first,
    validate_metadata,
)
from openpse.services.views import payment_view, refund_view
from openpse.storage.db import Tx
from openpse.storage.direct import Write, direct, prefixed, unprefixed
from openpse.storage.ledger import post_journal
from openpse.storage.repos import in_scope, list_page, load_scoped, missing, update_versioned
from openpse.storage.rows import page_result, row_dict
from openpse.storage.tables import merchants, payment_attempts, payments, refunds

__all__ = ["REFUND_REASONS", "REFUND_SOURCES", "REFUND_WINDOW_S", "complete_bank_refund",
           "create_refund", "get_refund", "list_refunds", "pay_out_due_refunds"]

REFUND_REASONS = ("duplicate", "fraudulent", "requested_by_customer")
REFUND_SOURCES = ("payment", "overpayment")
# How long after capture a payment method can be refunded, per method (domain.local_methods).
REFUND_WINDOW_S = {k: days * 86400 for k, days in local_rules.REFUND_WINDOW_DAYS.items()}
DEFAULT_REFUND_WINDOW_S = 180 * 86400
PAYOUT_BATCH = 100


async def create_refund(svc: Services, caller: Caller, payment_id: str, amount: Any = None,
                        reason: str | None = None, metadata: Any = None,
                        destination: Any = None, source: str | None = None) -> dict[str, Any]:
    if caller.resume_resource_id:
        return await _resume(svc, caller, caller.resume_resource_id)
    if reason is not None and reason not in REFUND_REASONS:
        raise InvalidRequest(f"reason must be one of {', '.join(REFUND_REASONS)}", param="reason")
    if source is not None and source not in REFUND_SOURCES:
        raise InvalidRequest(f"source must be one of {', '.join(REFUND_SOURCES)}", param="source")
    md = validate_metadata(metadata)
    now = svc.now()
    refund_id = new_id("re_")
    # A request's claim written in the transaction below (the route's claim is deferred into
    # it) records the refund at once: a retry after a crash resumes it.
    caller.plan_resource(refund_id)
    async with svc.db.transaction() as tx:
        pay, clock = await _lock_payment(tx, caller, payment_id, now)
        method = pay["payment_method_type"] or "card"
        if method != "card":
            return await _create_bank_refund(svc, tx, caller, pay, amount, reason, md,
                                             destination, source or "payment", now,
                                             refund_id, clock)
        if destination is not None:
            raise InvalidRequest("card refunds go back to the card: send no destination",
                                 param="destination")
        if source == "overpayment":
            raise InvalidRequest("only bank transfers can be over-paid", param="source")
        amt = _check_refundable(pay, amount, clock)
        refund = {
            "id": refund_id, "merchant_id": caller.merchant_id, "livemode": caller.livemode,
            "payment_id": payment_id, "amount": amt, "currency": pay["currency"],
            "status": "pending", "reason": reason, "metadata": md, "failure_code": None,
            "failure_message": None, "destination": None, "source": "payment",
            "completes_at": None, "created": now, "updated": now, "version": 1,
        }
        # The refund, the payment's update (version-checked), both events and the attempt are
        # held and made together: one statement on PostgreSQL.
        held = Held(keep=True, writes=[(refunds, refund)])
        before = payment_view(pay)
        pay = held.update(payments, pay, {"amount_refunded": pay["amount_refunded"] + amt},
                          now=now)
        await record_event(tx, caller=caller, merchant_id=caller.merchant_id,
                           livemode=caller.livemode, type="refund.created",
                           obj=refund_view(refund), previous=None, now=now, held=held)
        after = payment_view(pay)
        await record_event(tx, caller=caller, merchant_id=caller.merchant_id,
                           livemode=caller.livemode, type="payment.refund_pending", obj=after,
                           previous=changed_fields(before, after), now=now, held=held)
        attempt = _attempt_row(pay, "refund", amt, now, refund_id=refund["id"])
        held.writes.append((payment_attempts, attempt))
        await _recovery_point(tx, caller, refund["id"])
        await flush(tx, held)
    return await _execute(svc, caller, refund, pay, str(attempt["id"]), respond_status=201)


async def _lock_payment(tx: Tx, caller: Caller, payment_id: str, now: int
                        ) -> tuple[dict[str, Any], int]:
    """The payment, locked (PostgreSQL; SQLite's single writer serialises), and the
    merchant's clock (``services.clock.merchant_now``): one statement."""
    d = direct(tx)
    sql = _LOCK_PAYMENT if d.is_sqlite else _LOCK_PAYMENT + " FOR UPDATE OF p"
    row = await d.fetchone(sql, {"id": payment_id}, table=payments, carry=True)
    if row is None or not in_scope(row, caller.merchant_id, caller.livemode):
        raise missing("payment", payment_id, "payment")
    return row, clock_at(now, bool(row["livemode"]), row.pop("clock_offset_s"))


# The payment by its key alone (``storage.repos.in_scope`` says why) and its merchant's
# sandbox clock.
_LOCK_PAYMENT = ("SELECT p.*, m.sandbox_clock_offset_s AS clock_offset_s FROM payments p "
                 "JOIN merchants m ON m.id = p.merchant_id WHERE p.id = :id")


async def _create_bank_refund(svc: Services, tx: Tx, caller: Caller, pay: dict[str, Any],
                              amount: Any, reason: str | None, md: dict[str, str],
                              destination: Any, source: str, now: int, refund_id: str,
                              clock: int) -> dict[str, Any]:
    """A refund paid by bank transfer: booked now, ``pending`` until the payout."""
    m, cur, lm = pay["merchant_id"], pay["currency"], bool(pay["livemode"])
    if source == "overpayment":
        amt = _check_overpayment_refundable(pay, amount)
    else:
        amt = _check_refundable(pay, amount, clock)
    dest = _destination(svc, pay, destination, refund_id)
    refund = {
        "id": refund_id, "merchant_id": m, "livemode": lm, "payment_id": pay["id"],
        "amount": amt, "currency": cur, "status": "pending", "reason": reason, "metadata": md,
        "failure_code": None, "failure_message": None, "destination": dest, "source": source,
        "completes_at": clock + local_rules.BANK_REFUND_DELAY_S, "created": now, "updated": now,
        "version": 1,
    }
    await tx.execute(insert(refunds).values(**refund))
    await post_journal(tx, merchant_id=m, livemode=lm, kind="refund", reference_id=refund_id,
                       entries=ledger.bank_refund_accepted(m, cur, amt, source), now=now)
    field = "amount_refunded" if source == "payment" else "amount_overpaid_refunded"
    before = payment_view(pay)
    pay = await update_versioned(tx, payments, pay, {field: pay[field] + amt}, now=now)
    await record_event(tx, caller=caller, merchant_id=m, livemode=lm, type="refund.created",
                       obj=refund_view(refund), previous=None, now=now)
    after = payment_view(pay)
    await record_event(tx, caller=caller, merchant_id=m, livemode=lm,
                       type="payment.refund_pending", obj=after,
                       previous=changed_fields(before, after), now=now)
    await _recovery_point(tx, caller, refund_id)
    return refund_view(refund)


def _destination(svc: Services, pay: dict[str, Any], destination: Any,
                 refund_id: str) -> dict[str, Any]:
    """Where a bank refund goes: the account in ``destination``, or a debit's own IBAN."""
    method = pay["payment_method_type"]
    if method == "sepa_debit":
        if destination is not None:
            raise InvalidRequest("SEPA debits are refunded to the debited account: send no "
                                 "destination", param="destination")
        debit = (pay["payment_method"] or {}).get("sepa_debit") or {}
        return {"type": "iban", "country": debit.get("country"),
                "bank_code": debit.get("bank_code"), "last4": debit.get("last4"),
                "account_holder_name": debit.get("account_holder_name"),
                "mandate": (debit.get("mandate") or {}).get("reference")}
    wanted = local_rules.refund_destination_type(method, pay["currency"])
    if wanted is None:  # pragma: no cover - every local method has a refund route
        raise InvalidRequest(f"{method} payments cannot be refunded here", param="payment")
    if destination is None:
        raise InvalidRequest(
            f"{method} has no card network to send money back through: give the shopper's "
            f"account as destination (type {wanted})", code="parameter_missing",
            param="destination")
    account = bank_details.validate_destination(destination, wanted)
    return {**account.view, "account_number_enc": svc.secrets.encrypt(
        account.secret, context=f"refund_destination:{refund_id}")}


def _check_overpayment_refundable(pay: dict[str, Any], amount: Any) -> int:
    """The excess of an over-paid transfer is the shopper's: refundable without a window."""
    left = int(pay["amount_overpaid"]) - int(pay["amount_overpaid_refunded"])
    if pay["payment_method_type"] != "bank_transfer":
        raise InvalidRequest("only bank transfers can be over-paid", param="source")
    amt = left if amount is None else parse_amount(amount, pay["currency"])
    if amt > left or amt <= 0:
        raise InvalidRequest(
            f"refund amount {amt} is more than the {left} {pay['currency']} of over-payment left "
            f"to refund on payment {pay['id']}", code="amount_too_large", param="amount")
    return amt


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
                   pay: dict[str, Any], attempt_id: str, *, respond_status: int | None = None
                   ) -> dict[str, Any]:
    connector = svc.connectors[pay["connector"] or DEFAULT_CONNECTOR]
    try:
        result = await connector.refund(attempt_id, pay["connector_reference"] or "",
                                        refund["amount"], refund["currency"])
    except Exception as exc:
        result = ConnectorResult(Outcome.PENDING, message=f"connector error: {type(exc).__name__}")
    return await apply_refund_result(svc, caller, refund["id"], attempt_id, result,
                                     respond_status=respond_status)


async def apply_refund_result(svc: Services, caller: Caller | None, refund_id: str,
                              attempt_id: str, result: ConnectorResult, *,
                              respond_status: int | None = None) -> dict[str, Any]:
    """Apply the acquirer's answer to a refund in one transaction. With ``respond_status``,
    the request's answer (the refund) is stored with its idempotency key in it
    (``Caller.respond``)."""
    now = svc.now()
    done = await unlocked_first(svc, result, lambda: _apply_unlocked(
        svc, caller, refund_id, attempt_id, result, now, respond_status))
    if done is not None:
        return done
    async with svc.db.transaction() as tx:
        ref, attempt_status, pay = await _lock_for_answer(tx, refund_id, attempt_id)
        if result.outcome == Outcome.PENDING or ref["status"] != "pending" or (
                attempt_status not in (None, "pending")):
            return refund_view(ref)
        return await _finish(tx, caller, ref, pay, result, now,
                             writes=[_finished_attempt(attempt_id, result, now)],
                             respond_status=respond_status)


async def _apply_unlocked(svc: Services, caller: Caller | None, refund_id: str, attempt_id: str,
                          result: ConnectorResult, now: int, respond_status: int | None
                          ) -> dict[str, Any] | None:
    """PostgreSQL, the common case (a refund ``pending`` with its attempt pending), as
    ``payments._apply_unlocked`` does for payments: read without a lock, then the whole answer
    as one statement that commits by itself, its balances included, with the payment's and the
    refund's updates checked against the versions read and the attempt's against
    ``pending``. ``GuardMissed`` (nothing written) when one changed in between; None when the
    case is not the common one (the locked path decides)."""
    async with svc.db.read() as conn:
        row = await direct(conn).fetchone(_FOR_ANSWER, {"id": refund_id, "att": attempt_id})
    if row is None or row["a_status"] != "pending":
        return None
    ref, pay = _answer_rows(row)
    if ref["status"] != "pending":
        return None
    table, values, where = _finished_attempt(attempt_id, result, now)
    guard: Write = (table, values, {**where, "status": "pending"})
    async with svc.db.transaction(alone=True) as tx:
        return await _finish(tx, caller, ref, pay, result, now, guards=[guard],
                             respond_status=respond_status, last=True)


def _finished_attempt(attempt_id: str, result: ConnectorResult, now: int
                      ) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """The refund attempt's update for the acquirer's answer (a ``Direct`` write)."""
    return (payment_attempts, {
        "status": "succeeded" if result.outcome == Outcome.SUCCEEDED else "failed",
        "updated": now, "connector_reference": result.connector_reference,
        "error_code": result.decline_code}, {"id": attempt_id})


async def _lock_for_answer(tx: Tx, refund_id: str, attempt_id: str
                           ) -> tuple[dict[str, Any], str | None, dict[str, Any]]:
    """The refund, its attempt's status (None without one) and its payment, locked: one
    statement (the payment is locked before the refund's state is looked at)."""
    d = direct(tx)
    sql = _FOR_ANSWER if d.is_sqlite else _FOR_ANSWER + " FOR UPDATE OF p"
    row = await d.fetchone(sql, {"id": refund_id, "att": attempt_id})
    if row is None:
        raise missing("refund", refund_id)
    ref, pay = _answer_rows(row)
    return ref, row["a_status"], pay


def _answer_rows(row: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The refund and its payment out of a ``_FOR_ANSWER`` row."""
    return (unprefixed(row, "r", _REFUND_COLUMNS, refunds),
            unprefixed(row, "p", _PAYMENT_COLUMNS, payments))


_REFUND_COLUMNS = tuple(c.name for c in refunds.columns)
_PAYMENT_COLUMNS = tuple(c.name for c in payments.columns)
_FOR_ANSWER = (
    f"SELECT {prefixed('r', _REFUND_COLUMNS)}, {prefixed('p', _PAYMENT_COLUMNS)}, "
    'a.status AS "a_status"'
    # The payment by its key alone (``storage.repos.in_scope`` says why); a refund's payment
    # is its merchant's and mode's by construction.
    " FROM refunds r JOIN payments p ON p.id = r.payment_id"
    " LEFT JOIN payment_attempts a ON a.id = :att"
    " WHERE r.id = :id")


async def _finish(tx: Tx, caller: Caller | None, ref: dict[str, Any], pay: dict[str, Any],
                  result: ConnectorResult, now: int, *, writes: list[Write] | None = None,
                  guards: list[Write] | None = None, respond_status: int | None = None,
                  last: bool = False) -> dict[str, Any]:
    """The answer's changes (``pay`` is the refund's payment, locked or read at a version
    its guard checks); ``writes`` and ``guards`` go with them; ``last``: the unit's last write
    (``flush``)."""
    m, cur, lm = ref["merchant_id"], ref["currency"], bool(ref["livemode"])
    ok = result.outcome == Outcome.SUCCEEDED
    # The journal, both rows' version-checked updates and the events are held and made
    # together with ``writes``: one statement on PostgreSQL.
    held = Held(keep=True, writes=list(writes or ()), guards=list(guards or ()))
    before_ref = refund_view(ref)
    if ok:
        await post_journal(tx, merchant_id=m, livemode=lm, kind="refund", reference_id=ref["id"],
                           entries=ledger.refund(m, cur, ref["amount"]), now=now,
                           writes=held.writes)
        new = held.update(refunds, ref, {"status": "succeeded"}, now=now)
        etype = "refund.succeeded"
        before_pay = payment_view(pay)
        pay = held.update(payments, pay, {}, now=now)
        after_pay = payment_view(pay)
        await record_event(tx, caller=caller, merchant_id=m, livemode=lm,
                           type="payment.refunded", obj=after_pay,
                           previous=changed_fields(before_pay, after_pay), now=now, held=held)
    else:
        new = held.update(refunds, ref, {
            "status": "failed", "failure_code": result.decline_code or "refund_failed",
            "failure_message": result.message}, now=now)
        etype = "refund.failed"
        held.update(payments, pay, {"amount_refunded": pay["amount_refunded"] - ref["amount"]},
                    now=now)
    after = refund_view(new)
    await record_event(tx, caller=caller, merchant_id=m, livemode=lm, type=etype, obj=after,
                       previous=changed_fields(before_ref, after), now=now, held=held)
    if respond_status is not None and caller is not None:
        await caller.store_answer(tx, respond_status, after, held.writes)
    held.guard_first(payments, pay["id"])  # the locked path's order: the payment first
    await flush(tx, held, last=last)
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
    async with svc.db.read() as conn:
        rows = [refund_view(r) for r in await list_page(
            conn, refunds, merchant_id=caller.merchant_id, livemode=caller.livemode,
            equal={"payment_id": payment or None, "status": status or None}, limit=limit,
            cursor=cursor, created_gte=created_gte, created_lt=created_lt)]
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


# ---- refunds by bank transfer: the payout -------------------------------------------------

async def complete_bank_refund(svc: Services, caller: Caller, refund_id: str,
                               outcome: str) -> dict[str, Any]:
    """Sandbox: the payout of a pending bank refund is made (``succeed``) or bounces (``fail``)."""
    if outcome not in ("succeed", "fail"):
        raise InvalidRequest("outcome must be succeed or fail", param="outcome")
    async with svc.db.transaction() as tx:
        ref = await load_scoped(tx, refunds, refund_id, merchant_id=caller.merchant_id,
                                livemode=caller.livemode, lock=True, what="refund")
        if ref["completes_at"] is None:
            raise InvalidRequest(f"refund {refund_id} goes back through the card network; only "
                                 "refunds paid by bank transfer wait for a payout",
                                 code="refund_method_mismatch")
        if ref["status"] != "pending":
            raise Conflict(f"refund {refund_id} is {ref['status']}: only a pending refund can be "
                           "paid out", code="refund_invalid_state")
        failure = None if outcome == "succeed" else local_rules.SANDBOX_REFUND_FAILURE[1:]
        return await _pay_out(tx, caller, ref, failure, svc.now())


async def pay_out_due_refunds(svc: Services, now_s: int) -> int:
    """The worker: pending bank refunds whose payout time has come (merchant's clock) are paid;
    a sandbox account ending in 9999 bounces. Exactly once per refund (row lock + re-check)."""
    r = refunds.c
    stmt = (select(r.id, r.merchant_id, r.livemode)
            .select_from(refunds.join(merchants, merchants.c.id == r.merchant_id))
            .where(r.status == "pending", r.completes_at.is_not(None),
                   r.completes_at <= now_s + offset_sql(r.livemode))
            .order_by(r.completes_at).limit(PAYOUT_BATCH))
    async with svc.db.read() as conn:
        due = (await conn.execute(stmt)).all()
    done = 0
    for refund_id, merchant_id, livemode in due:
        async with svc.db.transaction() as tx:
            ref = await load_scoped(tx, refunds, refund_id, merchant_id=merchant_id,
                                    livemode=bool(livemode), lock=True, what="refund")
            if ref["status"] != "pending":
                continue  # completed by the helper, or another worker, meanwhile
            last4 = str((ref["destination"] or {}).get("last4"))
            await _pay_out(tx, None, ref, local_rules.sandbox_refund_failure(last4), now_s)
        done += 1
    return done


async def _pay_out(tx: Tx, caller: Caller | None, ref: dict[str, Any],
                   failure: tuple[str, str] | None, now: int) -> dict[str, Any]:
    m, cur, lm, amt = ref["merchant_id"], ref["currency"], bool(ref["livemode"]), ref["amount"]
    source = ref["source"] or "payment"
    pay = await load_scoped(tx, payments, ref["payment_id"], merchant_id=m, livemode=lm,
                            lock=True, what="payment")
    before_ref = refund_view(ref)
    if failure is None:
        await post_journal(tx, merchant_id=m, livemode=lm, kind="refund_paid",
                           reference_id=ref["id"], entries=ledger.bank_refund_paid(m, cur, amt),
                           now=now)
        new = await update_versioned(tx, refunds, ref, {"status": "succeeded"}, now=now)
        if source == "payment":
            before_pay = payment_view(pay)
            pay = await update_versioned(tx, payments, pay, {}, now=now)
            after_pay = payment_view(pay)
            await record_event(tx, caller=caller, merchant_id=m, livemode=lm,
                               type="payment.refunded", obj=after_pay,
                               previous=changed_fields(before_pay, after_pay), now=now)
        etype = "refund.succeeded"
    else:
        await post_journal(tx, merchant_id=m, livemode=lm, kind="refund_reversal",
                           reference_id=ref["id"],
                           entries=ledger.bank_refund_failed(m, cur, amt, source), now=now)
        new = await update_versioned(tx, refunds, ref, {
            "status": "failed", "failure_code": failure[0], "failure_message": failure[1]},
            now=now)
        field = "amount_refunded" if source == "payment" else "amount_overpaid_refunded"
        await update_versioned(tx, payments, pay, {field: pay[field] - amt}, now=now)
        etype = "refund.failed"
    after = refund_view(new)
    await record_event(tx, caller=caller, merchant_id=m, livemode=lm, type=etype, obj=after,
                       previous=changed_fields(before_ref, after), now=now)
    return after
