"""Events: written in the same transaction as the state change they describe.

``record_event`` inserts the event and hands it to every registered sink inside that same
transaction (the webhook outbox registers one), so a committed change always has its event and
its pending deliveries, and a rolled-back change has neither.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from openpse.domain.ids import new_id
from openpse.services.context import Caller
from openpse.storage.db import Tx
from openpse.storage.direct import direct
from openpse.storage.rows import rfc3339

__all__ = ["API_VERSION", "EventSink", "changed_fields", "record_event", "register_sink"]

API_VERSION = "2026-11-01"

# A sink gets the transaction, the event as delivered, and the merchant it belongs to.
EventSink = Callable[[Tx, dict[str, Any], str], Awaitable[None]]
_SINKS: list[EventSink] = []


def register_sink(sink: EventSink) -> None:
    if sink not in _SINKS:
        _SINKS.append(sink)


def changed_fields(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """``previous_attributes``: the fields of ``before`` whose values differ in ``after``."""
    skip = {"updated", "version"}
    return {k: v for k, v in before.items() if k not in skip and after.get(k) != v}


async def record_event(
    tx: Tx, *, caller: Caller | None, merchant_id: str, livemode: bool, type: str,
    obj: dict[str, Any], previous: dict[str, Any] | None, now: int,
) -> dict[str, Any]:
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
    await direct(tx).execute(_INSERT_EVENT, {
        "id": event_id, "merchant_id": merchant_id, "livemode": livemode, "type": type,
        "object_id": obj["id"], "payload": orjson.dumps(event).decode(), "created": now})
    for sink in _SINKS:
        await sink(tx, event, merchant_id)
    return event


_INSERT_EVENT = ("INSERT INTO events (id, merchant_id, livemode, type, object_id, payload, created)"
                 " VALUES (:id, :merchant_id, :livemode, :type, :object_id, :payload, :created)")
