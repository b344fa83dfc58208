"""``Direct.execute(..., writes=...)``: inserts and updates made with a statement, in one round
trip on PostgreSQL (each in the statement's WITH) and just before it on SQLite. All of them are
made, JSON columns encoded as ``insert`` / ``update`` would, with a main statement that has a
WITH of its own or not; a conflict in any of them fails the statement and the transaction
keeps nothing."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from openpse.storage.direct import direct
from openpse.storage.tables import simulator_operations as ops

_MAIN = ("INSERT INTO simulator_operations (reference, operation, amount, currency, result, "
         "created) VALUES (:ref, 'sale', 1, 'JPY', :result, 1)")
_MAIN_WITH = "WITH seven AS (SELECT 7 AS n) " + _MAIN.replace(
    "1, 'JPY'", "(SELECT n FROM seven), 'JPY'")


def _op(reference: str, amount: int) -> dict[str, Any]:
    return {"reference": reference, "operation": "void", "amount": amount, "currency": "EUR",
            "result": {"outcome": "captured", "n": amount}, "created": 2}


async def _rows(services: Any, prefix: str) -> dict[str, tuple[Any, ...]]:
    async with services.db.read() as conn:
        got = await conn.execute(select(ops.c.reference, ops.c.operation, ops.c.amount,
                                        ops.c.currency, ops.c.result)
                                 .where(ops.c.reference.like(prefix + "%")))
        return {r.reference: tuple(r)[1:] for r in got}


@pytest.mark.parametrize("main", [_MAIN, _MAIN_WITH], ids=["plain", "with"])
async def test_writes_are_made_with_the_statement(services: Any, main: str) -> None:
    p = f"ins-{uuid.uuid4().hex[:12]}-"
    async with services.db.transaction() as tx:
        await direct(tx).insert(ops, _op(p + "old", 1))
    async with services.db.transaction() as tx:
        changed = await direct(tx).execute(
            main, {"ref": p + "main", "result": '{"outcome": "main"}'},
            writes=[(ops, _op(p + "a", 5)), (ops, _op(p + "b", 6)),
                    (ops, {"amount": 9, "result": {"outcome": "updated"}},
                     {"reference": p + "old"})])
    assert changed == 1  # the main statement's own count
    assert await _rows(services, p) == {
        p + "main": ("sale", 7 if main is _MAIN_WITH else 1, "JPY", {"outcome": "main"}),
        p + "a": ("void", 5, "EUR", {"outcome": "captured", "n": 5}),
        p + "b": ("void", 6, "EUR", {"outcome": "captured", "n": 6}),
        p + "old": ("void", 9, "EUR", {"outcome": "updated"}),
    }


async def test_a_conflicting_insert_fails_the_statement_and_nothing_is_kept(
        services: Any) -> None:
    p = f"ins-{uuid.uuid4().hex[:12]}-"
    async with services.db.transaction() as tx:
        await direct(tx).insert(ops, _op(p + "taken", 1))
    with pytest.raises(IntegrityError):
        async with services.db.transaction() as tx:
            await direct(tx).execute(_MAIN, {"ref": p + "main", "result": "{}"},
                                     writes=[(ops, _op(p + "new", 2)), (ops, _op(p + "taken", 3))])
    assert set(await _rows(services, p)) == {p + "taken"}


async def test_guards_are_made_with_the_statement_and_their_counts_returned(
        services: Any) -> None:
    """``execute_guarded``: updates made with the statement whose row counts come back in
    order (one statement on PostgreSQL), so a version-checked update that missed is seen."""
    p = f"grd-{uuid.uuid4().hex[:12]}-"
    async with services.db.transaction() as tx:
        await direct(tx).insert(ops, _op(p + "one", 1))
        await direct(tx).insert(ops, _op(p + "two", 2))
    async with services.db.transaction() as tx:
        counts = await direct(tx).execute_guarded(
            _MAIN, {"ref": p + "main", "result": "{}"}, writes=[(ops, _op(p + "new", 3))],
            guards=[(ops, {"amount": 10}, {"reference": p + "one", "amount": 1}),
                    (ops, {"amount": 20}, {"reference": p + "two", "amount": 99}),
                    (ops, {"currency": "USD"}, {"currency": "EUR", "operation": "void",
                                                 "reference": p + "two"})])
    assert counts == [1, 0, 1]  # the second's where no longer holds: it changed nothing
    got = await _rows(services, p)
    assert {k: v[1:3] for k, v in got.items()} == {
        p + "one": (10, "EUR"), p + "two": (2, "USD"), p + "new": (3, "EUR"),
        p + "main": (1, "JPY")}


async def test_a_held_update_that_misses_its_version_raises_and_nothing_is_kept(
        services: Any) -> None:
    """``events.flush`` checks every held guard: one that changed no row (a lost update)
    raises, and the transaction keeps none of what was held with it."""
    from openpse.services.events import Held, flush, record_event

    p = f"grd-{uuid.uuid4().hex[:12]}-"
    async with services.db.transaction() as tx:
        await direct(tx).insert(ops, _op(p + "row", 1))
    with pytest.raises(RuntimeError, match="concurrent update"):
        async with services.db.transaction() as tx:
            held = Held(keep=True, writes=[(ops, _op(p + "held", 2))],
                        guards=[(ops, {"amount": 5}, {"reference": p + "row", "amount": 1}),
                                (ops, {"amount": 6}, {"reference": p + "gone"})])
            await record_event(tx, caller=None, merchant_id="mch_guard", livemode=False,
                               type="payment.succeeded", obj={"id": p + "obj"}, previous=None,
                               now=1, held=held)
            assert held.events  # kept: written only by flush
            await flush(tx, held)
    assert await _rows(services, p) == {p + "row": ("void", 1, "EUR",
                                                    {"outcome": "captured", "n": 1})}
