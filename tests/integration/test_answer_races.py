"""Applying an acquirer's answer (``payments.apply_result``) when something else changes the
payment at the same time. On PostgreSQL the answer is read without a lock and written as one
statement that checks the payment's version and the attempt's ``pending`` itself
(``Database.transaction(alone=True)``); a change in between fails that statement, writing
nothing, and the answer is applied again under the lock. Either way a payment is posted once,
its events are written once and the ledger balances. SQLite runs the locked path only."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from contextlib import asynccontextmanager
from typing import Any

import pytest
from asyncpg.exceptions import InvalidTextRepresentationError
from sqlalchemy import func, select, update

from openpse.connectors.base import ConnectorResult, Outcome
from openpse.services import payments as svc_payments
from openpse.services.context import Caller
from openpse.storage.direct import GuardMissed
from openpse.storage.tables import (
    events,
    idempotency_keys,
    merchants,
    payment_attempts,
    payments,
)
from tests.support.answers import answering_caller, until_it_waits_for_a_lock
from tests.support.ledger import (
    VISA,
    ProcessDied,
    acquirer_acts_then_dies,
    journals_for,
    ledger_problems,
    merchant_balances,
)


async def _processing(services: Any, shop: Caller, monkeypatch: Any, n: int
                      ) -> list[tuple[str, str]]:
    """``n`` payments the acquirer charged whose answer was never applied: (payment, attempt).
    Two payments succeed first: the merchant's ledger accounts then exist and their ids are
    cached (ids are cached once read back, not when created), so applying an answer has
    nothing to read or create before its statement."""
    for warm in ("race-warm-1", "race-warm-2"):
        await svc_payments.create_payment(services, shop, {
            "amount": 1000, "currency": "USD", "merchant_order_id": warm, "confirm": True,
            "capture_method": "automatic", "payment_method": {"type": "card"}},
            svc_payments.CardInput(VISA, 12, 2034, "123"))
    acquirer_acts_then_dies(services, monkeypatch, ProcessDied)
    for i in range(n):
        with pytest.raises(ProcessDied):
            await svc_payments.create_payment(services, shop, {
                "amount": 1500 + i, "currency": "USD", "merchant_order_id": f"race-{i}",
                "confirm": True, "capture_method": "automatic",
                "payment_method": {"type": "card"}},
                svc_payments.CardInput(VISA, 12, 2034, "123"))
    monkeypatch.undo()
    async with services.db.read() as conn:
        rows = (await conn.execute(
            select(payments.c.id, payment_attempts.c.id.label("att"))
            .join(payment_attempts, payment_attempts.c.payment_id == payments.c.id)
            .where(payments.c.merchant_id == shop.merchant_id,
                   payments.c.status == "processing",
                   payment_attempts.c.status == "pending"))).all()
    assert len(rows) == n
    return [(r.id, r.att) for r in rows]


def _apply(services: Any, shop: Caller, payment_id: str, attempt_id: str,
           caller: Caller | None = None) -> Any:
    return svc_payments.apply_result(
        services, caller, payment_id, attempt_id, "authorize",
        ConnectorResult(Outcome.CAPTURED, connector_reference=f"ch_{attempt_id}"),
        merchant_id=shop.merchant_id, livemode=False, respond_status=None if caller is None
        else 201)


async def _key_status(services: Any, record_id: int) -> str:
    async with services.db.read() as conn:
        return str((await conn.execute(select(idempotency_keys.c.status).where(
            idempotency_keys.c.id == record_id))).scalar_one())


async def _posted_once(services: Any, shop: Caller, pays: list[tuple[str, str]]) -> None:
    async with services.db.read() as conn:
        total = (await conn.execute(select(func.sum(payments.c.amount - payments.c.fee)).where(
            payments.c.merchant_id == shop.merchant_id,
            payments.c.status == "succeeded"))).scalar_one()
        for payment_id, attempt_id in pays:
            row = (await conn.execute(select(payments).where(
                payments.c.id == payment_id))).one()
            assert row.status == "succeeded" and row.amount_received == row.amount
            n_succeeded = (await conn.execute(select(func.count()).select_from(events).where(
                events.c.object_id == payment_id,
                events.c.type == "payment.succeeded"))).scalar_one()
            assert n_succeeded == 1
            att = (await conn.execute(select(payment_attempts.c.status).where(
                payment_attempts.c.id == attempt_id))).scalar_one()
            assert att == "succeeded"
    for payment_id, _ in pays:
        assert [j["kind"] for j in await journals_for(services, payment_id)] == ["capture"]
    assert not await ledger_problems(services)
    balances = await merchant_balances(services, shop.merchant_id)
    # credits are negative in these books: the merchant is owed what it took, less fees
    assert sum(v for (kind, _), v in balances.items() if kind == "merchant_pending") == -total


async def test_answers_racing_for_one_attempt_post_it_once(services: Any, shop: Caller,
                                                             monkeypatch: Any) -> None:
    """The third racer is a request that stores its answer with its key. Whoever wins, the
    claim says the answer is stored exactly when the key's row is completed: a racer whose
    lone statement missed must not leave the claim believing its uncommitted answer stored
    (the pipeline would then skip storing what it sends, leaving the key locked)."""
    pays = await _processing(services, shop, monkeypatch, 4)
    lost = []
    for payment_id, attempt_id in pays:
        caller, got, _ = await answering_caller(services, shop.merchant_id,
                                                f"race-{uuid.uuid4().hex}", "/v1/payments")
        outs = await asyncio.gather(_apply(services, shop, payment_id, attempt_id),
                                    _apply(services, shop, payment_id, attempt_id),
                                    _apply(services, shop, payment_id, attempt_id, caller))
        assert [o["status"] for o in outs] == ["succeeded"] * 3
        assert len({o["version"] for o in outs}) == 1  # the one that won, as all read it
        completed = await _key_status(services, got.record_id) == "completed"
        assert completed == (got.stored is not None), (completed, got.stored)
        lost.append(not completed)
    # started last, the answering racer loses nearly always: the case above is exercised
    assert any(lost)
    await _posted_once(services, shop, pays)


async def test_a_payment_changed_after_the_unlocked_read_is_answered_under_the_lock(
        services: Any, shop: Caller, monkeypatch: Any) -> None:
    """A real write on another connection between the answer's read and its statement (the
    hook opens it right before the unit begins): the statement misses its guard and writes
    nothing, and the locked path applies the answer to the payment as it now is."""
    ((payment_id, attempt_id),) = await _processing(services, shop, monkeypatch, 1)
    real_transaction = services.db.transaction
    missed: list[BaseException] = []
    interfered: list[str] = []

    @asynccontextmanager
    async def transaction(*, alone: bool = False) -> Any:
        if alone:
            async with real_transaction() as other:  # someone else, committed first
                await other.execute(update(payments).where(payments.c.id == payment_id)
                                    .values(version=payments.c.version + 1,
                                            description=f"changed {uuid.uuid4().hex[:6]}"))
            interfered.append(payment_id)
        async with real_transaction(alone=alone) as tx:
            yield tx

    real_unlocked = svc_payments._apply_unlocked

    async def unlocked(*a: Any, **kw: Any) -> Any:
        try:
            return await real_unlocked(*a, **kw)
        except GuardMissed as exc:
            missed.append(exc)
            raise

    monkeypatch.setattr(services.db, "transaction", transaction)
    monkeypatch.setattr(svc_payments, "_apply_unlocked", unlocked)
    async with services.db.read() as conn:
        version_before = (await conn.execute(select(payments.c.version).where(
            payments.c.id == payment_id))).scalar_one()
    out = await _apply(services, shop, payment_id, attempt_id)
    monkeypatch.undo()
    assert out["status"] == "succeeded"
    if services.db.is_sqlite:  # the locked path only: no unlocked read to go stale
        assert interfered == [] and missed == []
        assert out["version"] == version_before + 1
    else:
        assert interfered == [payment_id] and len(missed) == 1
        # missed by the lone statement's own check (not counted afterwards in a transaction)
        assert isinstance(missed[0].__cause__, InvalidTextRepresentationError)
        assert out["version"] == version_before + 2  # theirs, then the answer
        assert out["description"].startswith("changed ")  # applied to their row, not ours
    await _posted_once(services, shop, [(payment_id, attempt_id)])


async def test_the_lone_answer_takes_the_payment_before_its_attempt_as_the_locked_path_does(
        services: Any, shop: Caller, monkeypatch: Any) -> None:
    """Another transaction holds the payment's row lock (as the locked path's answer does:
    the payment first, then its attempt) while the answer's lone statement runs; then it
    updates the attempt and the payment and commits. Had the statement taken the attempt's row
    first, the two would wait for each other until PostgreSQL aborted one (a deadlock: this
    request would fail). Taken in the same order, the statement waits for the payment, misses
    its version and the answer is applied under the lock."""
    ((payment_id, attempt_id),) = await _processing(services, shop, monkeypatch, 1)
    async with services.db.read() as conn:
        version_before = (await conn.execute(select(payments.c.version).where(
            payments.c.id == payment_id))).scalar_one()
    async with services.db.transaction() as other:
        await other.execute(select(payments.c.id).where(payments.c.id == payment_id)
                            .with_for_update())
        answer = asyncio.create_task(_apply(services, shop, payment_id, attempt_id))
        await until_it_waits_for_a_lock(services, answer)  # the payment's row, or SQLite's
        await other.execute(update(payment_attempts).where(payment_attempts.c.id == attempt_id)
                            .values(updated=payment_attempts.c.updated + 1))
        await other.execute(update(payments).where(payments.c.id == payment_id)
                            .values(version=payments.c.version + 1, description="theirs"))
    out = await asyncio.wait_for(answer, 30)
    assert out["status"] == "succeeded"
    assert out["version"] == version_before + 2 and out["description"] == "theirs"
    await _posted_once(services, shop, [(payment_id, attempt_id)])


async def _with_terms(services: Any, shop: Caller) -> Caller:
    """``shop`` as the pipeline makes a caller: with the merchant's terms read with its key."""
    async with services.db.read() as conn:
        got = (await conn.execute(select(merchants.c.pricing, merchants.c.sandbox_clock_offset_s)
                                  .where(merchants.c.id == shop.merchant_id))).one()
    return dataclasses.replace(shop, merchant_terms={
        "pricing": got.pricing, "sandbox_clock_offset_s": got.sandbox_clock_offset_s})


def _count_answer_reads(monkeypatch: Any) -> list[bool]:
    """From now on, each read of a payment with its attempt before an answer
    (``_with_attempt``) is recorded: its ``lock`` flag (the locked path's read on PostgreSQL)."""
    reads: list[bool] = []
    real_with_attempt = svc_payments._with_attempt

    async def with_attempt(*a: Any, lock: bool) -> Any:
        reads.append(lock)
        return await real_with_attempt(*a, lock=lock)

    monkeypatch.setattr(svc_payments, "_with_attempt", with_attempt)
    return reads


def _create(services: Any, caller: Caller, order: str) -> Any:
    return svc_payments.create_payment(services, caller, {
        "amount": 1700, "currency": "USD", "merchant_order_id": order, "confirm": True,
        "capture_method": "automatic", "payment_method": {"type": "card"}},
        svc_payments.CardInput(VISA, 12, 2034, "123"))


async def test_the_answer_to_rows_the_request_just_wrote_reads_nothing_and_still_sees_a_change(
        services: Any, shop: Caller, monkeypatch: Any) -> None:
    """A create+confirm's answer applies to the payment and attempt the request committed a
    moment before and prices with the terms read with its key: it reads neither again (on
    PostgreSQL one statement, guarded; on SQLite a transaction whose guards are checked as
    written). A real change to the payment while the acquirer works (another connection,
    committed) makes the guard miss, writing nothing, and the locked path apply the answer to
    the payment as it now is; either way it is posted once."""
    caller = await _with_terms(services, shop)
    for warm in ("known-warm-1", "known-warm-2"):  # the ledger's account ids cached
        await _create(services, caller, warm)
    reads = _count_answer_reads(monkeypatch)
    quiet, _ = await _create(services, caller, "known-quiet")
    assert quiet["status"] == "succeeded" and quiet["fee"] > 0
    assert reads == []
    assert quiet == await svc_payments.get_payment(services, shop, quiet["id"])

    sim = services.connectors["simulator"]
    real_authorize = sim.authorize

    async def authorize_while_someone_edits(req: Any) -> Any:
        async with services.db.transaction() as other:  # committed before the answer
            await other.execute(update(payments).where(payments.c.id == req.payment_id)
                                .values(version=payments.c.version + 1,
                                        description="edited meanwhile"))
        return await real_authorize(req)

    monkeypatch.setattr(sim, "authorize", authorize_while_someone_edits)
    reads.clear()
    edited, _ = await _create(services, caller, "known-edited")
    monkeypatch.undo()
    assert edited["status"] == "succeeded" and edited["description"] == "edited meanwhile"
    assert edited["version"] == quiet["version"] + 1  # theirs, then the answer
    # no unlocked read: the statement missed, then the locked path read (``lock``: PostgreSQL)
    assert reads == [not services.db.is_sqlite]
    await _posted_once(services, shop, [(p["id"], await _attempt_of(services, p["id"]))
                                        for p in (quiet, edited)])


async def _attempt_of(services: Any, payment_id: str) -> str:
    async with services.db.read() as conn:
        return str((await conn.execute(select(payment_attempts.c.id).where(
            payment_attempts.c.payment_id == payment_id))).scalar_one())


@pytest.mark.parametrize("operation", ["capture", "void"])
async def test_a_capture_or_void_answers_the_rows_it_just_wrote_and_sees_a_change(
        services: Any, shop: Caller, monkeypatch: Any, operation: str) -> None:
    """A capture's or a void's first transaction inserts its attempt and makes the payment
    ``processing`` (one statement on PostgreSQL); the answer applies to those rows as
    committed, reading neither again. An edit while the acquirer works makes its guard miss
    and the locked path apply it to the payment as it now is, once."""
    caller = await _with_terms(services, shop)
    held = []
    for order in (f"{operation}-quiet", f"{operation}-edited"):
        view, _ = await svc_payments.create_payment(services, caller, {
            "amount": 1800, "currency": "USD", "merchant_order_id": order, "confirm": True,
            "capture_method": "manual", "payment_method": {"type": "card"}},
            svc_payments.CardInput(VISA, 12, 2034, "123"))
        assert view["status"] == "requires_capture"
        held.append(view)
    act = (svc_payments.capture_payment if operation == "capture"
           else svc_payments.cancel_payment)
    reads = _count_answer_reads(monkeypatch)
    quiet = await act(services, caller, held[0]["id"])
    final = "succeeded" if operation == "capture" else "canceled"
    assert quiet["status"] == final and reads == []
    assert quiet == await svc_payments.get_payment(services, shop, held[0]["id"])

    sim = services.connectors["simulator"]
    real_call = getattr(sim, operation)
    edited_id = held[1]["id"]

    async def call_while_someone_edits(*args: Any) -> Any:
        async with services.db.transaction() as other:
            await other.execute(update(payments).where(payments.c.id == edited_id)
                                .values(version=payments.c.version + 1,
                                        description="edited meanwhile"))
        return await real_call(*args)

    monkeypatch.setattr(sim, operation, call_while_someone_edits)
    edited = await act(services, caller, edited_id)
    monkeypatch.undo()
    assert edited["status"] == final and edited["description"] == "edited meanwhile"
    assert edited["version"] == quiet["version"] + 1  # theirs, then the answer
    assert reads == [not services.db.is_sqlite]  # the locked path's read, after the miss
    kinds = ["authorization", "capture" if operation == "capture" else "release"]
    for pid in (held[0]["id"], edited_id):
        assert [j["kind"] for j in await journals_for(services, pid)] == kinds
    assert not await ledger_problems(services)
