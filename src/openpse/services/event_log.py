"""Reading events back, and redelivering one (CONTRACT §4 "Events and webhook endpoints").

An event is stored as the exact JSON its webhooks carry, so ``get_event_payload`` returns the
bytes a receiver got. A redelivery is a new delivery row for the *same* event: it is signed and
sent like the first, with the same ``webhook-id``, so a receiver that de-duplicates by id
treats it as the message it may already have.
"""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import select

from openpse.domain.errors import Conflict, InvalidRequest, NotFound
from openpse.services.context import Caller, Services
from openpse.services.webhook_endpoints import delivery_view, load_endpoint
from openpse.storage.repos import in_scope, list_page
from openpse.storage.rows import page_result
from openpse.storage.tables import events, webhook_endpoints
from openpse.webhooks.outbox import enqueue, subscribes

__all__ = ["get_event_payload", "list_events", "redeliver_event"]


async def list_events(
    svc: Services, caller: Caller, *, limit: int, cursor: str | None, created_gte: int | None,
    created_lt: int | None, type: str | None = None, object_id: str | None = None,
) -> dict[str, Any]:
    """The caller's events in the caller's mode, newest first."""
    async with svc.db.read() as conn:
        rows = await list_page(conn, events, merchant_id=caller.merchant_id,
                               livemode=caller.livemode,
                               equal={"type": type, "object_id": object_id}, limit=limit,
                               cursor=cursor, created_gte=created_gte, created_lt=created_lt,
                               columns="id, payload")
    return page_result([orjson.loads(r["payload"]) for r in rows], limit)


async def get_event_payload(svc: Services, caller: Caller, event_id: str) -> str:
    """The event's JSON exactly as stored and delivered; 404 outside the caller's scope."""
    t = events
    async with svc.db.read() as conn:  # by its key alone, the scope after (repos.in_scope)
        row = (await conn.execute(select(t.c.payload, t.c.merchant_id, t.c.livemode).where(
            t.c.id == event_id))).first()
    if row is None or not in_scope(row._mapping, caller.merchant_id, caller.livemode):
        raise NotFound(f"no such event: {event_id!r}", param="id")
    return str(row.payload)


async def redeliver_event(
    svc: Services, caller: Caller, event_id: str, *, endpoint_id: str | None = None
) -> dict[str, Any]:
    """Queue the event again: to ``endpoint_id``, or to every enabled endpoint subscribed."""
    now = svc.now()
    async with svc.db.transaction() as tx:
        event = (await tx.execute(select(
            events.c.id, events.c.type, events.c.merchant_id, events.c.livemode).where(
            events.c.id == event_id))).first()
        if event is None or not in_scope(event._mapping, caller.merchant_id, caller.livemode):
            raise NotFound(f"no such event: {event_id!r}", param="id")
        if endpoint_id is not None:
            row = await load_endpoint(tx, caller, endpoint_id, param="endpoint")
            if row["status"] != "enabled":
                raise Conflict(f"webhook endpoint {endpoint_id} is disabled; enable it first",
                               code="webhook_endpoint_disabled")
            if not subscribes(row["enabled_events"], event.type):
                raise InvalidRequest(
                    f"webhook endpoint {endpoint_id} does not subscribe to {event.type}; add it "
                    "to the endpoint's enabled_events first",
                    code="event_type_not_enabled", param="endpoint")
            targets = [row["id"]]
        else:
            w = webhook_endpoints
            rows = (await tx.execute(select(w.c.id, w.c.enabled_events).where(
                w.c.merchant_id == caller.merchant_id, w.c.livemode == caller.livemode,
                w.c.status == "enabled").order_by(w.c.id))).all()
            targets = [r.id for r in rows if subscribes(r.enabled_events, event.type)]
        created = await enqueue(tx, event_id=event.id, endpoint_ids=targets,
                                merchant_id=caller.merchant_id, livemode=caller.livemode,
                                now_s=now)
    return {"object": "list", "data": [delivery_view(r, []) for r in created],
            "has_more": False, "next_cursor": None}
