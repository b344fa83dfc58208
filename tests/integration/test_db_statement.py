"""``Database.statement()``: a write of one statement that is its own transaction (PostgreSQL
runs it in autocommit, saving the BEGIN and COMMIT round trips; SQLite runs a transaction as
usual). It is durable when the block ends, a failed statement leaves nothing behind and the
connection usable, and a deferred first write still pending in the context (a request's
idempotency claim) shares a real transaction with it."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError

from openpse.storage.db import first_write
from openpse.storage.direct import direct
from openpse.storage.tables import simulator_operations


def _op(reference: str) -> dict[str, Any]:
    return {"reference": reference, "operation": "sale", "amount": 100, "currency": "JPY",
            "result": {"outcome": "captured"}, "created": 1}


async def _count(services: Any, *refs: str) -> int:
    async with services.db.read() as conn:
        return int((await conn.execute(select(func.count()).select_from(simulator_operations)
                                       .where(simulator_operations.c.reference.in_(refs))))
                   .scalar_one())


async def test_one_statement_commits_by_itself(services: Any) -> None:
    ref = f"stmt-{uuid.uuid4().hex}"
    async with services.db.statement() as conn:
        await direct(conn).insert(simulator_operations, _op(ref))
        if not services.db.is_sqlite:  # autocommit: already there for everyone else
            assert await _count(services, ref) == 1
    assert await _count(services, ref) == 1
    through_core = f"stmt-{uuid.uuid4().hex}"  # SQLAlchemy begins a transaction: committed too
    async with services.db.statement() as conn:
        await conn.execute(insert(simulator_operations).values(**_op(through_core)))
    assert await _count(services, through_core) == 1


async def test_a_failed_statement_leaves_nothing_and_the_connection_usable(services: Any) -> None:
    ref = f"stmt-{uuid.uuid4().hex}"
    async with services.db.statement() as conn:
        await direct(conn).insert(simulator_operations, _op(ref))
    for _ in range(3):  # the same writer connections come back after each failure
        with pytest.raises(IntegrityError):
            async with services.db.statement() as conn:
                await direct(conn).insert(simulator_operations, _op(ref))
    other = f"stmt-{uuid.uuid4().hex}"
    async with services.db.transaction() as tx:
        await direct(tx).insert(simulator_operations, _op(other))
    assert await _count(services, ref, other) == 2


class _Hook:
    """A deferred first write (as a request's idempotency claim is): one row of its own."""

    def __init__(self, ref: str) -> None:
        self.ref, self.state = ref, "pending"

    def pending(self) -> bool:
        return self.state == "pending"

    def take(self) -> bool:
        if self.state != "pending":
            return False
        self.state = "running"
        return True

    async def run(self, tx: Any) -> None:
        await direct(tx).insert(simulator_operations, _op(self.ref))

    def committed(self) -> None:
        self.state = "committed"

    def rolled_back(self) -> None:
        self.state = "pending"


class _Boom(Exception):
    pass


async def test_a_pending_first_write_shares_a_transaction_with_the_statement(
        services: Any) -> None:
    hook_ref, ref = f"hook-{uuid.uuid4().hex}", f"stmt-{uuid.uuid4().hex}"
    hook = _Hook(hook_ref)
    with first_write(hook):
        with pytest.raises(_Boom):
            async with services.db.statement() as conn:
                await direct(conn).insert(simulator_operations, _op(ref))
                raise _Boom
        assert hook.state == "pending" and await _count(services, hook_ref, ref) == 0
        async with services.db.statement() as conn:
            await direct(conn).insert(simulator_operations, _op(ref))
    assert hook.state == "committed" and await _count(services, hook_ref, ref) == 2
