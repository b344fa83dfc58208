"""Helpers for tests of how answers are applied: a request's caller that stores its answer
with its Idempotency-Key (as the pipeline's does), and waiting until a task waits for a row
lock another transaction holds."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import text

from openpse.api.errors import JSON_CONTENT_TYPE
from openpse.api.idempotency import Claimed, IdempotencyStore
from openpse.services.context import Caller


async def answering_caller(services: Any, merchant_id: str, key: str, path: str
                           ) -> tuple[Caller, Claimed, IdempotencyStore]:
    """A request's caller whose answer is stored with its key (``Caller.respond``), its
    claim, and the store (``store.begin`` with the same key replays what was stored)."""
    store = IdempotencyStore(services.db, services.secrets, lock_timeout_s=60)
    got = await store.begin(merchant_id=merchant_id, livemode=False, key=key, method="POST",
                            path=path, req_hash="h-" + key, now=services.now())
    assert isinstance(got, Claimed)

    async def respond(tx: Any, status: int, body: bytes, writes: Any = None) -> None:
        await store.store_in(tx, got, status=status, headers={"content-type": JSON_CONTENT_TYPE},
                             body=body, writes=writes)
    return Caller(merchant_id, False, idempotency_ref=got, respond=respond), got, store


async def until_it_waits_for_a_lock(services: Any, task: asyncio.Task[Any]) -> None:
    """Return once some session of the test database waits for a lock (PostgreSQL), or after
    a moment (SQLite: the task waits for the one writer, nothing to observe); ``task`` must
    still be running."""
    for _ in range(250):
        await asyncio.sleep(0.02)
        if services.db.is_sqlite:
            break
        async with services.db.read() as conn:
            if (await conn.execute(text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock'"))).scalar_one():
                break
    else:
        raise AssertionError("the task never waited for a lock")
    assert not task.done()
