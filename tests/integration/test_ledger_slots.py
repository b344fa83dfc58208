"""An account's balance is the sum of its slot rows (``ledger_balances``): concurrent payments of
one merchant add to different slots instead of queueing on one hot row, and every reader (the
balance API, ``ledger verify``) sums them. Migration 0007 moved the old one-row balances."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import inspect, select, text
from sqlalchemy.ext.asyncio import create_async_engine

from openpse.config import to_async_url
from openpse.services import payments as svc_payments
from openpse.services.context import Caller
from openpse.storage.ledger import BALANCE_SLOTS, balances_for
from openpse.storage.migrate import alembic_config, upgrade
from openpse.storage.tables import ledger_accounts, ledger_balances, postings
from tests.conftest import BACKEND, PG_BASE_URL, _pg_admin, new_merchant
from tests.support.ledger import VISA, ledger_problems
from tests.support.servers import TEST_MASTER_KEY, run_cli

PAYMENTS = 24


async def test_concurrent_payments_spread_balances_over_slots_that_add_up(services: Any
                                                                           ) -> None:
    kit = await new_merchant(services, "http://unused")
    caller = Caller(kit.merchant_id, False)
    card = svc_payments.CardInput(VISA, 12, 2034, "123")

    async def pay(i: int) -> dict[str, Any]:
        params = {"amount": 1000 + i, "currency": "JPY", "merchant_order_id": f"slots-{i}",
                  "confirm": True, "capture_method": "automatic",
                  "payment_method": {"type": "card"}}
        view, _ = await svc_payments.create_payment(services, caller, params, card)
        return view

    views = await asyncio.gather(*(pay(i) for i in range(PAYMENTS)))
    assert [v["status"] for v in views] == ["succeeded"] * PAYMENTS

    mine = ledger_accounts.c.merchant_id == kit.merchant_id
    async with services.db.read() as conn:
        slots = (await conn.execute(
            select(ledger_balances.c.slot).distinct()
            .select_from(ledger_balances.join(ledger_accounts,
                                              ledger_accounts.c.id == ledger_balances.c.account_id))
            .where(mine))).scalars().all()
        # What each account's postings add up to, summed here independently of the slots.
        posted: dict[tuple[str, str], int] = defaultdict(int)
        for kind, currency, amount in (await conn.execute(
                select(ledger_accounts.c.kind, ledger_accounts.c.currency, postings.c.amount)
                .select_from(postings.join(ledger_accounts,
                                           ledger_accounts.c.id == postings.c.account_id))
                .where(mine))).all():
            posted[(kind, currency)] += amount
        balances = await balances_for(conn, kit.merchant_id, False)

    assert 1 < len(slots) and all(0 <= s < BALANCE_SLOTS for s in slots)
    assert balances == dict(posted)
    assert balances[("merchant_pending", "JPY")] < 0 < balances[("acquirer_receivable", "JPY")]
    assert balances[("acquirer_receivable", "JPY")] == sum(1000 + i for i in range(PAYMENTS))
    assert not await ledger_problems(services)


@pytest.fixture
def scratch_url(tmp_path: Path) -> Iterator[str]:
    """An empty database of the backend under test, for migrations."""
    if BACKEND == "sqlite":
        yield to_async_url(f"sqlite:///{tmp_path / 'm.db'}")
        return
    name = "openpse_mig_" + secrets.token_hex(4)
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield to_async_url(PG_BASE_URL.rsplit("/", 1)[0] + "/" + name)
    finally:
        asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _run(url: str, sql: str) -> list[Any]:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            res = await conn.execute(text(sql))
            return [tuple(r) for r in res] if res.returns_rows else []
    finally:
        await engine.dispose()


def _inspected(url: str, look: Callable[[Any], Any]) -> Any:
    """``look(inspector)`` on the database at ``url`` (its tables, a table's columns)."""

    async def run() -> Any:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(lambda c: look(inspect(c)))
        finally:
            await engine.dispose()

    return asyncio.run(run())


def test_0007_moves_each_balance_to_slot_0_and_back(scratch_url: str) -> None:
    url = scratch_url
    upgrade(url, "0006")
    asyncio.run(_run(url, "INSERT INTO ledger_accounts (id, merchant_id, livemode, currency, kind,"
                          " balance, created) VALUES (1, 'mch_a', false, 'JPY', 'a', 1500, 0),"
                          " (2, 'mch_a', false, 'JPY', 'b', -1500, 0),"
                          " (3, 'mch_a', false, 'USD', 'a', 0, 0)"))
    upgrade(url, "head")
    assert "balance" not in {c["name"] for c in _inspected(
        url, lambda i: i.get_columns("ledger_accounts"))}
    assert sorted(asyncio.run(_run(url, "SELECT account_id, slot, balance FROM ledger_balances"))
                  ) == [(1, 0, 1500), (2, 0, -1500)]
    asyncio.run(_run(url, "INSERT INTO ledger_balances (account_id, slot, balance) "
                          "VALUES (1, 7, 20), (2, 9, -20)"))
    command.downgrade(alembic_config(url), "0006")
    assert sorted(asyncio.run(_run(url, "SELECT id, balance FROM ledger_accounts"))
                  ) == [(1, 1520), (2, -1520), (3, 0)]
    assert "ledger_balances" not in _inspected(url, lambda i: i.get_table_names())


def _one_account_in_slots(url: str, merchant_id: str, slots: dict[int, int]) -> None:
    """A migrated database with one account (id 1, EUR merchant_pending) of ``merchant_id`` and
    these slot balances, and no postings."""
    upgrade(url, "head")
    asyncio.run(_run(url, "INSERT INTO ledger_accounts (id, merchant_id, livemode, currency, kind,"
                          f" created) VALUES (1, '{merchant_id}', false, 'EUR', "
                          "'merchant_pending', 0)"))
    values = ", ".join(f"(1, {slot}, {balance})" for slot, balance in slots.items())
    asyncio.run(_run(url, "INSERT INTO ledger_balances (account_id, slot, balance) "
                          f"VALUES {values}"))


def test_a_balance_read_sums_the_slots(scratch_url: str) -> None:
    """Every slot of an account counts, whatever its number."""
    url = scratch_url
    _one_account_in_slots(url, "mch_b", {0: -100, 5: -250, 63: -1})

    async def read() -> dict[tuple[str, str], int]:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:
                return await balances_for(conn, "mch_b", False)
        finally:
            await engine.dispose()

    assert asyncio.run(read()) == {("merchant_pending", "EUR"): -351}


def test_ledger_verify_on_the_command_line_sums_the_slots(scratch_url: str, tmp_path: Path
                                                          ) -> None:
    """`openpse ledger verify` (which opens the database alone, no app) reads balances as the
    sum of their slots: two slots of an account without postings make one drift of their sum."""
    url = scratch_url
    _one_account_in_slots(url, "mch_c", {3: 2, 40: 3})
    env = dict(os.environ, OPENPSE_MASTER_KEY=TEST_MASTER_KEY, OPENPSE_DATA_DIR=str(tmp_path))
    res = run_cli(["ledger", "verify", "--json", "--database-url", url], env)
    assert res.returncode == 1, res.stdout + res.stderr
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert report["ok"] is False and report["accounts"] == 1
    assert report["problems"] == ["account 1 balance 5 != sum of postings 0",
                                  "accounts (test, EUR) sum to 5, not zero"]
