"""``created_gte``/``created_lt`` on a list: the range also bounds the ids (so the list reads the
index from the range's end instead of walking the whole history), and that bound never drops a
row whose id was made within a day of its ``created`` (lock waits, host skew, a clock stepped
back), whichever side of ``created`` its id's clock fell."""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import insert

from openpse.domain.ids import first_id_at, new_id
from openpse.services import event_log
from openpse.storage.rows import ID_BOUND_SLACK_S
from openpse.storage.tables import events
from tests.support.webhooks import new_caller

T0 = 1_790_000_000  # 2026-09-21, a whole second


def test_first_id_at_is_below_every_id_made_from_that_millisecond() -> None:
    ms = T0 * 1000
    floor = first_id_at("evt_", ms)
    assert floor.startswith("evt_") and len(floor) == len(new_id("evt_"))
    made = [new_id("evt_", now_ms=ms) for _ in range(200)]
    assert all(floor <= m for m in made)
    assert all(m < first_id_at("evt_", ms + 1) for m in made)
    assert all(new_id("evt_", now_ms=ms - 1) < floor for _ in range(200))
    assert first_id_at("evt_", -5) == first_id_at("evt_", 0)


async def test_a_created_range_finds_every_row_whose_id_clock_is_within_a_day(
        services: Any) -> None:
    caller = await new_caller(services)
    # each row: created second, and how far its id's clock is from it (ms, either side)
    skew = ID_BOUND_SLACK_S * 1000 - 1000
    plan = [(T0 - 10, 0), (T0 - 1, skew), (T0, -skew), (T0, 0), (T0 + 1, skew),
            (T0 + 5, -skew), (T0 + 9, 999), (T0 + 10, -skew), (T0 + 11, 0)]
    rows = []
    for created, off in plan:
        eid = new_id("evt_", now_ms=created * 1000 + off)
        rows.append({"id": eid, "merchant_id": caller.merchant_id, "livemode": False,
                     "type": "payment.succeeded", "object_id": f"pay_{created}_{off}",
                     "payload": orjson.dumps({"id": eid, "created": created}).decode(),
                     "created": created})
    async with services.db.transaction() as tx:
        await tx.execute(insert(events), rows)

    def expect(gte: int | None, lt: int | None) -> list[str]:
        hit = [r for r in rows if (gte is None or r["created"] >= gte)
               and (lt is None or r["created"] < lt)]
        return sorted((r["id"] for r in hit), reverse=True)

    for gte, lt in [(T0, T0 + 10), (T0, None), (None, T0 + 10), (T0 - 1, T0 + 1),
                    (T0 + 10, T0 + 11), (T0 + 12, None), (None, T0 - 10), (T0 - 100, T0 + 100)]:
        page = await event_log.list_events(services, caller, limit=100, cursor=None,
                                           created_gte=gte, created_lt=lt)
        assert [e["id"] for e in page["data"]] == expect(gte, lt), (gte, lt)

    # paging through a range with the cursor gives the same rows
    seen: list[str] = []
    cursor = None
    while True:
        page = await event_log.list_events(services, caller, limit=2, cursor=cursor,
                                           created_gte=T0, created_lt=T0 + 11)
        seen += [e["id"] for e in page["data"]]
        if not page["has_more"]:
            break
        cursor = page["next_cursor"]
    assert seen == expect(T0, T0 + 11) and len(seen) == 6
