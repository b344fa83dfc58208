"""The merchant's clock: wall time, plus a sandbox merchant's test-clock offset.

A sandbox merchant can move its own time forward (``POST /v1/test_helpers/clock/advance``), so
expiries, refund windows and settlements can be tested in seconds. Every such decision reads
``merchant_now``; jobs that scan many merchants compare against ``now_s + offset_sql()`` joined
from ``merchants``. Live merchants have no offset. The offset only grows: a deadline, once
passed, stays passed.

What runs on the merchant's clock: deadlines and the stamps they are computed from
(``expires_at``, ``captured_at``, a debit's settlement, a refund's payout, a checkout session's
``expires_at``). ``created``/``updated`` and event times stay wall-clock.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, case, false, select, update

from openpse.domain.errors import InvalidRequest, NotFound
from openpse.services.context import Caller, Services
from openpse.storage.db import Tx
from openpse.storage.rows import rfc3339
from openpse.storage.tables import merchants

__all__ = ["MAX_ADVANCE_S", "advance_clock", "clock_at", "clock_view", "get_clock",
           "merchant_now", "offset_sql"]

MAX_ADVANCE_S = 400 * 86400  # per call: a refund window and then some
MAX_OFFSET_S = 20 * 366 * 86400


def clock_at(now: int, livemode: bool, offset_s: int | None) -> int:
    """The merchant's time at wall time ``now``, its offset read elsewhere (with another row):
    the sandbox offset for a sandbox caller, none live."""
    return now if livemode else now + int(offset_s or 0)


async def merchant_now(svc: Services, conn: Tx, merchant_id: str, livemode: bool) -> int:
    """The merchant's time: wall time, plus the sandbox offset for a sandbox caller."""
    now = svc.now()
    if livemode:
        return now
    offset = (await conn.execute(select(merchants.c.sandbox_clock_offset_s).where(
        merchants.c.id == merchant_id))).scalar()
    return clock_at(now, livemode, offset)


def offset_sql(livemode_col: Any) -> ColumnElement[Any]:
    """SQL for a row's clock offset; the query must join ``merchants`` on its merchant id."""
    return case((livemode_col == false(), merchants.c.sandbox_clock_offset_s), else_=0)


def clock_view(now: int, offset_s: int) -> dict[str, Any]:
    return {"object": "test_clock", "livemode": False, "now": rfc3339(now + offset_s),
            "offset_seconds": offset_s}


async def get_clock(svc: Services, caller: Caller) -> dict[str, Any]:
    async with svc.db.read() as conn:
        offset = (await conn.execute(select(merchants.c.sandbox_clock_offset_s).where(
            merchants.c.id == caller.merchant_id))).scalar()
    if offset is None:
        raise NotFound("no such merchant", code="resource_missing")
    return clock_view(svc.now(), int(offset))


async def advance_clock(svc: Services, caller: Caller, seconds: Any) -> dict[str, Any]:
    """Move the sandbox merchant's time forward by ``seconds`` (1 .. MAX_ADVANCE_S)."""
    if caller.livemode:  # the route answers 404 first; a service-level guard all the same
        raise NotFound("the test clock exists in sandbox mode only", code="route_not_found")
    if isinstance(seconds, bool) or not isinstance(seconds, int) or \
            not 1 <= seconds <= MAX_ADVANCE_S:
        raise InvalidRequest(f"seconds must be an integer from 1 to {MAX_ADVANCE_S} "
                             f"({MAX_ADVANCE_S // 86400} days); time only moves forward",
                             param="seconds")
    async with svc.db.transaction() as tx:
        m = merchants.c
        res = await tx.execute(update(merchants).where(
            m.id == caller.merchant_id, m.sandbox_clock_offset_s + seconds <= MAX_OFFSET_S)
            .values(sandbox_clock_offset_s=m.sandbox_clock_offset_s + seconds))
        if res.rowcount != 1:
            raise InvalidRequest(f"the test clock cannot move more than {MAX_OFFSET_S // 86400} "
                                 "days ahead in all", code="clock_limit_reached", param="seconds")
        offset = int((await tx.execute(select(m.sandbox_clock_offset_s).where(
            m.id == caller.merchant_id))).scalar_one())
    return clock_view(svc.now(), offset)
