"""Background jobs of the payments core, run by ``openpse.worker``.

- ``resolve_attempts``: acquirer calls left ``pending`` by a crash (older than
  ``STUCK_AFTER_S``) are settled by asking the acquirer about the same reference.
- ``expire_payments``: unpaid vouchers and transfers past their deadline are canceled
  (``expired``); ``warn_expiring``: ``payment.expiring_soon`` once, a configurable time before.
- ``settle_debits``: SEPA debits whose settlement date has come are settled or returned.
- ``pay_out_refunds``: pending refunds by bank transfer are paid out at ``completes_at``.

Every deadline is on the merchant's clock (a sandbox merchant's test-clock offset applies).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from openpse.services import payments as svc_payments
from openpse.services import refunds as svc_refunds
from openpse.services.context import Services
from openpse.storage.tables import payment_attempts

__all__ = ["STUCK_AFTER_S", "jobs"]

STUCK_AFTER_S = 10
BATCH = 50


async def resolve_stuck_attempts(svc: Services, now_s: int) -> int:
    async with svc.db.read() as conn:
        rows = (await conn.execute(
            select(payment_attempts).where(payment_attempts.c.status == "pending",
                                           payment_attempts.c.created < now_s - STUCK_AFTER_S)
            .order_by(payment_attempts.c.created).limit(BATCH))).all()
    for attempt in rows:
        if attempt.operation == "refund":
            await svc_refunds.resolve_refund_attempt(svc, attempt)
        else:
            await svc_payments.resolve_attempt(svc, attempt)
    return 0  # periodic: never keeps the loop from sleeping (an answer may stay pending)


def jobs(svc: Services) -> dict[str, Any]:
    # Imported here, before any job runs: it also registers the hook that completes a checkout
    # session when a payment resolved by this worker succeeds.
    from openpse.services import local_payments
    from openpse.services.checkout import expire_due_sessions

    async def resolve(now_s: int) -> int:
        return await resolve_stuck_attempts(svc, now_s)

    async def expire_sessions(now_s: int) -> int:
        return await expire_due_sessions(svc, now_s)

    async def expire_payments(now_s: int) -> int:
        return await local_payments.expire_due_payments(svc, now_s)

    async def warn_expiring(now_s: int) -> int:
        return await local_payments.warn_expiring_payments(svc, now_s)

    async def settle_debits(now_s: int) -> int:
        return await local_payments.settle_due_debits(svc, now_s)

    async def pay_out_refunds(now_s: int) -> int:
        return await svc_refunds.pay_out_due_refunds(svc, now_s)

    # Payments expire before their sessions are looked at: a voucher's deadline cancels it as
    # ``expired``, never as the session's ``abandoned``.
    return {"resolve_attempts": resolve, "expire_payments": expire_payments,
            "warn_expiring": warn_expiring, "settle_debits": settle_debits,
            "pay_out_refunds": pay_out_refunds, "expire_sessions": expire_sessions}
