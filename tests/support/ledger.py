"""Shared helpers of the payments tests: request bodies for the sandbox test cards, and reads of
the books (ledger, simulator, events) straight from the database the server writes to."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from sqlalchemy import func, select

from openpse.storage.ledger import account_balances
from openpse.storage.ledger_verify import verify_ledger
from openpse.storage.tables import (
    events,
    journals,
    ledger_accounts,
    payment_attempts,
    payments,
    postings,
    simulator_operations,
)

# CONTRACT §6 sandbox test cards
VISA = "4242424242424242"
MASTERCARD = "5555555555554444"
JCB = "3566002020360505"
THREE_DS = "4000000000003220"
DECLINED = "4000000000000002"
INSUFFICIENT = "4000000000009995"
EXPIRED = "4000000000000069"
INCORRECT_CVC = "4000000000000127"
PROCESSING_ERROR = "4000000000000119"
DISPUTE = "4000000000000259"
FRAUD = "4100000000000019"

EXP_YEAR = 2034


def card_pm(number: str = VISA, cvc: str = "123", **extra: Any) -> dict[str, Any]:
    card = {"number": number, "exp_month": 12, "exp_year": EXP_YEAR, "cvc": cvc, **extra}
    return {"type": "card", "card": card}


def payment_body(number: str = VISA, *, amount: int = 1000, currency: str = "USD",
                 order: str = "order-1", confirm: bool = True, capture_method: str = "automatic",
                 cvc: str = "123", **extra: Any) -> dict[str, Any]:
    return {"amount": amount, "currency": currency, "merchant_order_id": order,
            "payment_method": card_pm(number, cvc), "confirm": confirm,
            "capture_method": capture_method, **extra}


async def ledger_problems(services: Any) -> list[str]:
    """``verify_ledger`` plus an independent check, in Python, that every journal balances."""
    async with services.db.read() as conn:
        rep = await verify_ledger(conn)
        rows = (await conn.execute(
            select(postings.c.journal_id, postings.c.currency, postings.c.amount))).all()
    sums: dict[tuple[str, str], int] = defaultdict(int)
    for journal_id, currency, amount in rows:
        assert isinstance(amount, int), (journal_id, amount)
        sums[(journal_id, currency)] += amount
    return rep.problems + [f"{j} {c} sums to {s}" for (j, c), s in sums.items() if s]


async def journals_for(services: Any, reference_id: str) -> list[dict[str, Any]]:
    """The journals posted for one payment or refund, oldest first, with their postings."""
    async with services.db.read() as conn:
        jrows = (await conn.execute(select(journals).where(
            journals.c.reference_id == reference_id).order_by(journals.c.id))).all()
        out = []
        for j in jrows:
            prow = (await conn.execute(
                select(ledger_accounts.c.kind, ledger_accounts.c.merchant_id, postings.c.currency,
                       postings.c.amount)
                .select_from(postings.join(ledger_accounts,
                                           ledger_accounts.c.id == postings.c.account_id))
                .where(postings.c.journal_id == j.id).order_by(postings.c.id))).all()
            out.append({"kind": j.kind, "postings": [tuple(r) for r in prow]})
    return out


async def merchant_balances(services: Any, merchant_id: str) -> dict[tuple[str, str], int]:
    """Each of the merchant's accounts' balance: the sum of its slots (0 with none)."""
    bal = account_balances()
    async with services.db.read() as conn:
        rows = (await conn.execute(
            select(ledger_accounts.c.kind, ledger_accounts.c.currency,
                   func.coalesce(bal.c.balance, 0).label("balance"))
            .select_from(ledger_accounts.outerjoin(bal, bal.c.account_id == ledger_accounts.c.id))
            .where(ledger_accounts.c.merchant_id == merchant_id))).all()
    return {(r.kind, r.currency): int(r.balance) for r in rows}


async def payment_events(services: Any, payment_id: str) -> list[dict[str, Any]]:
    """Events about one object, in the order of the object version they carry."""
    async with services.db.read() as conn:
        rows = (await conn.execute(select(events.c.payload).where(
            events.c.object_id == payment_id))).all()
    evs = [json.loads(r.payload) for r in rows]
    return sorted(evs, key=lambda ev: (ev["data"]["object"]["version"], ev["id"]))


async def payment_row(services: Any, payment_id: str) -> dict[str, Any]:
    async with services.db.read() as conn:
        row = (await conn.execute(select(payments).where(payments.c.id == payment_id))).first()
    assert row is not None, payment_id
    return dict(row._mapping)


async def count_payments(services: Any, merchant_id: str, order: str | None = None) -> int:
    stmt = select(func.count()).select_from(payments).where(payments.c.merchant_id == merchant_id)
    if order is not None:
        stmt = stmt.where(payments.c.merchant_order_id == order)
    async with services.db.read() as conn:
        return int((await conn.execute(stmt)).scalar_one())


async def acquirer_operations(services: Any, payment_id: str) -> list[dict[str, Any]]:
    """What the sandbox acquirer recorded for a payment's attempts (its own books)."""
    async with services.db.read() as conn:
        rows = (await conn.execute(
            select(simulator_operations.c.reference, simulator_operations.c.operation,
                   simulator_operations.c.amount)
            .select_from(simulator_operations.join(
                payment_attempts, payment_attempts.c.id == simulator_operations.c.reference))
            .where(payment_attempts.c.payment_id == payment_id))).all()
    return [dict(r._mapping) for r in rows]


class ProcessDied(BaseException):
    """Stands for the process dying: nothing in the code under test may catch it."""


def acquirer_acts_then_dies(services: Any, monkeypatch: Any, crash: type[BaseException],
                            operation: str = "authorize") -> None:
    """From now on (until ``monkeypatch.undo()``) the sandbox acquirer does ``operation``
    (charges the card, refunds it, ...), then the process "dies" (``crash``) before the
    answer is applied."""
    sim = services.connectors["simulator"]
    real = getattr(sim, operation)

    async def acts_then_dies(*args: Any) -> Any:
        await real(*args)
        raise crash

    monkeypatch.setattr(sim, operation, acts_then_dies)
