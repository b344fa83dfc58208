"""Events: written in the same transaction as the state change they describe.

``record_event`` inserts the event and its pending webhook deliveries (the outbox,
``webhooks/outbox.py``) inside that same transaction, so a committed change always has its
event and its deliveries, and a rolled-back change has neither.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import Table

from openpse.domain.ids import new_id
from openpse.services.context import Caller
from openpse.storage.db import BEFORE_COMMIT, TX_SCOPED_INFO, Tx, take_before_commit
from openpse.storage.direct import GuardMissed, Write, Writes, direct
from openpse.storage.rows import rfc3339
from openpse.webhooks.outbox import write_event, write_events

__all__ = ["API_VERSION", "Held", "changed_fields", "flush", "record_event"]

API_VERSION = "2026-11-01"


def changed_fields(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """``previous_attributes``: the fields of ``before`` whose values differ in ``after``."""
    skip = {"updated", "version"}
    return {k: v for k, v in before.items() if k not in skip and after.get(k) != v}


@dataclass(slots=True)
class Held:
    """Writes and events held back to be made together with a later event: one statement on
    PostgreSQL (``write_events``). A create+confirm holds its card, its payment and
    ``payment.created`` until ``payment.processing``, so the payment is inserted once, in the
    state it commits in, instead of inserted and updated (:func:`record_event`'s ``hold``;
    ``change_status`` replaces a held row instead of updating it). Applying an acquirer's
    answer holds everything (``keep``) until the request's stored answer joins it.

    Whatever is held is written by the next event recorded with it (unless ``keep``), or by
    :func:`flush`; a transaction that ends with something held would lose it, so its owner
    flushes before the transaction ends. ``guards``: version-checked updates, whose row
    counts :func:`flush` checks (a lost update raises and rolls the transaction back)."""

    writes: list[Write] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    guards: list[Write] = field(default_factory=list)
    keep: bool = False

    def holds_insert(self, table: Table, row_id: str) -> int | None:
        """The index in ``writes`` of the held insert of ``table``'s row ``row_id``, if any."""
        return _index_of(self.writes, table, row_id, 1)

    def guard_for(self, table: Table, row_id: str) -> int | None:
        """The index in ``guards`` of the held update of ``table``'s row ``row_id``, if any."""
        return _index_of(self.guards, table, row_id, 2)

    def guard_first(self, table: Table, row_id: str) -> None:
        """Move the guard of ``table``'s row ``row_id`` (if held) in front of the others. A
        statement that runs alone updates, and so locks, its guards' rows in order: give them
        in the order the locked paths lock them (a payment before its attempts and refunds),
        else the two could deadlock."""
        if (g := self.guard_for(table, row_id)) is not None:
            self.guards.insert(0, self.guards.pop(g))

    def update(self, table: Table, row: dict[str, Any], values: dict[str, Any], *, now: int
               ) -> dict[str, Any]:
        """``repos.update_versioned`` held: returns the new row (``version`` + 1), written when
        this is flushed, as a guard checked then. A held insert of the row takes the new row
        instead; a second update of a row joins its first (one row is written once in a
        statement)."""
        changes = {**values, "updated": now, "version": row["version"] + 1}
        new = {**row, **changes}
        if (at := self.holds_insert(table, row["id"])) is not None:
            self.writes[at] = (table, new)
        elif (g := self.guard_for(table, row["id"])) is not None:
            _, held_values, where = self.guards[g]  # type: ignore[misc]
            self.guards[g] = (table, {**held_values, **changes}, where)
        else:
            self.guards.append((table, changes, {"id": row["id"], "version": row["version"]}))
        return new


def _index_of(writes: list[Write], table: Table, row_id: str, part: int) -> int | None:
    """The first write to ``table`` of ``len(write) == part + 1`` whose ``write[part]`` (an
    insert's row, an update's where) has ``id`` ``row_id``."""
    for i, w in enumerate(writes):
        cols: Any = w[-1]  # len(w) == part + 1: w[part] is the last item
        if len(w) == part + 1 and w[0] is table and cols.get("id") == row_id:
            return i
    return None


async def flush(tx: Tx, held: Held, *, last: bool = False) -> None:
    """Write what ``held`` holds (nothing when it is empty); raise if a guard missed.
    ``last``: the transaction writes nothing after this (``Direct.execute_guarded``: a
    deferred idempotency claim may then ride in this statement, which commits alone; in a
    unit begun ``alone``, the statement is the unit, its balances included, and a missed
    guard raises ``GuardMissed`` from it, with nothing written)."""
    events, writes, guards = held.events, held.writes, held.guards
    held.events, held.writes, held.guards = [], [], []
    if events:
        tails = None
        if last and direct(tx).can_run_alone:  # the before-commit work rides in it
            tails = take_before_commit(tx)
        last = last and not tx.info.get(TX_SCOPED_INFO, {}).get(BEFORE_COMMIT)
        counts = await write_events(tx, events, now_s=int(time.time()), writes=writes,
                                    guards=guards, last=last, tails=tails or ())
    elif guards:
        counts = await direct(tx).execute_guarded("SELECT 1", writes=writes, guards=guards)
    else:
        await direct(tx).write_all(writes)
        return
    for g, count in zip(guards, counts, strict=True):
        if count != 1:  # a lost update: a missing lock, or an unlocked read that went stale
            raise GuardMissed(f"concurrent update of {g[0].name} {dict(g[2])}")  # type: ignore[misc]


async def record_event(
    tx: Tx, *, caller: Caller | None, merchant_id: str, livemode: bool, type: str,
    obj: dict[str, Any], previous: dict[str, Any] | None, now: int, writes: Writes = (),
    held: Held | None = None, hold: bool = False,
) -> dict[str, Any]:
    """Write the event and its deliveries; ``writes`` are made in the same statement (the
    object's own row, say: one round trip for both on PostgreSQL; ``Direct.execute``). With
    ``held``, what it holds is written first, in the same statement; with ``hold`` too, the
    event joins what is held instead (written by a later event or ``flush``)."""
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
    row = {"id": event_id, "merchant_id": merchant_id, "livemode": livemode, "type": type,
           "object_id": obj["id"], "payload": orjson.dumps(event).decode(), "created": now}
    if held is not None:
        held.writes.extend(writes)
        held.events.append(row)
        if not (hold or held.keep):
            await flush(tx, held)
        return event
    if hold:
        raise ValueError("hold needs held")
    # Wall-clock time for the deliveries, not the event's: a sandbox clock offset must not
    # delay them.
    await write_event(tx, row, now_s=int(time.time()), writes=writes)
    return event
