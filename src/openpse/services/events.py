"""Events: written in the same transaction as the state change they describe.

``record_event`` inserts the event and its pending webhook deliveries (the outbox,
``webhooks/outbox.py``) inside that same transaction, so a committed change always has its
event and its deliveries, and a rolled-back change has neither.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from openpse.domain.ids import new_id
from openpse.services.context import Caller
from openpse.storage.db import Tx
from openpse.storage.direct import Writes
from openpse.storage.rows import rfc3339
from openpse.webhooks.outbox import write_event

__all__ = ["API_VERSION", "changed_fields", "record_event"]

API_VERSION = "2026-11-01"


def changed_fields(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """``previous_attributes``: the fields of ``before`` whose values differ in ``after``."""
    skip = {"updated", "version"}
    return {k: v for k, v in before.items() if k not in skip and after.get(k) != v}


async def record_event(
    tx: Tx, *, caller: Caller | None, merchant_id: str, livemode: bool, type: str,
    obj: dict[str, Any], previous: dict[str, Any] | None, now: int, writes: Writes = (),
) -> dict[str, Any]:
    """Write the event and its deliveries; ``writes`` are made in the same statement (the
    object's own row, say: one round trip for both on PostgreSQL; ``Direct.execute``)."""
    event_id = new_id("evt_")
    event = {
        "id": event_id,
        "object": "event",
        "type": type,
        "created": rfc3339(now),
        "livemode": livemode,
        "api_version": API_VERSION,
        "data": {"object": obj, "previous_attributes": previous or {}},
        "request": caller.request_ref() if caller else None,
    }
    # Wall-clock time for the deliveries, not the event's: a sandbox clock offset must not
    # delay them.
    await write_event(tx, {
        "id": event_id, "merchant_id": merchant_id, "livemode": livemode, "type": type,
        "object_id": obj["id"], "payload": orjson.dumps(event).decode(), "created": now},
        now_s=int(time.time()), writes=writes)
    return event
