"""Background jobs of the payments core, run by ``openpse.worker``.

- ``resolve_attempts``: acquirer calls left ``pending`` by a crash (older than
  ``STUCK_AFTER_S``) are settled by asking the acquirer about the same reference.
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
    from openpse.services.checkout import expire_due_sessions

    async def resolve(now_s: int) -> int:
        return await resolve_stuck_attempts(svc, now_s)

    async def expire_sessions(now_s: int) -> int:
        return await expire_due_sessions(svc, now_s)

    return {"resolve_attempts": resolve, "expire_sessions": expire_sessions}
