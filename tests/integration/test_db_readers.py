"""``Database.read()`` keeps its connections open between reads (as the writers are): each read
gets a connection that is not in a transaction, so it sees every commit made before it began
(never a snapshot left over from an earlier read), a failed read leaves nothing behind, and no
more than the configured number stay open."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from sqlalchemy import func, select, text

from openpse.storage.direct import direct
from openpse.storage.tables import simulator_operations as ops


def _op(reference: str) -> dict[str, Any]:
    return {"reference": reference, "operation": "sale", "amount": 100, "currency": "JPY",
            "result": {"outcome": "captured"}, "created": 1}


def _driver(conn: Any) -> Any:
    return conn.sync_connection.connection.dbapi_connection


async def _count(conn: Any, ref: str) -> int:
    return int((await conn.execute(select(func.count()).select_from(ops)
                                   .where(ops.c.reference == ref))).scalar_one())


async def test_a_kept_read_connection_sees_what_was_committed_since(services: Any) -> None:
    ref = f"rd-{uuid.uuid4().hex}"
    async with services.db.read() as conn:
        assert await _count(conn, ref) == 0  # SQLAlchemy began a (read) transaction here
        first = _driver(conn)
    async with services.db.transaction() as tx:
        await direct(tx).insert(ops, _op(ref))
    async with services.db.read() as conn:
        assert _driver(conn) is first  # the same connection, kept open
        assert not conn.in_transaction()
        assert await _count(conn, ref) == 1  # not the first read's snapshot


async def test_a_failed_read_leaves_a_usable_connection(services: Any) -> None:
    with pytest.raises(Exception, match=r"no_such_table|does not exist|no such table"):
        async with services.db.read() as conn:
            await conn.execute(text("SELECT * FROM no_such_table"))
    async with services.db.read() as conn:
        assert not conn.in_transaction()
        assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1


async def test_no_more_read_connections_stay_open_than_configured(services: Any,
                                                                  monkeypatch: Any) -> None:
    db = services.db
    monkeypatch.setattr(db, "_readers_kept", 2)
    while db._idle_readers:  # start from none kept
        await db._idle_readers.pop()[0].close()
    gate = asyncio.Event()
    seen: list[Any] = []

    async def hold() -> None:
        async with db.read() as conn:
            seen.append(_driver(conn))
            await gate.wait()

    tasks = [asyncio.create_task(hold()) for _ in range(4)]  # within the smallest pool (4)
    async with asyncio.timeout(30):
        while len(seen) < 4:
            await asyncio.sleep(0.01)
    assert len({id(c) for c in seen}) == 4  # concurrent reads: one connection each
    gate.set()
    await asyncio.gather(*tasks)
    assert len(db._idle_readers) == 2
    async with db.read() as conn:  # a kept one is used again
        assert _driver(conn) in seen
