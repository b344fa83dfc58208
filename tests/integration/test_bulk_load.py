"""``bench/bulk_load.py`` on this run's backend: the payments it loads are what a real
create+confirm writes (same rows, same JSON, same events and journal), the API serves them
(get, newest-first list, filters, events), and ``ledger verify`` passes. Also: verify still
reports every kind of problem, and the loader refuses a database that is not migrated."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select, update

from openpse.domain import ledger
from openpse.domain.ids import PREFIXES
from openpse.services import payments as svc_payments
from openpse.services.context import Caller
from openpse.storage import tables as t
from openpse.storage.ledger_verify import verify_ledger
from tests.conftest import BACKEND, MerchantKit
from tests.support.ledger import (
    journals_for,
    ledger_problems,
    merchant_balances,
    payment_body,
    payment_events,
    payment_row,
)
from tests.support.servers import TEST_MASTER_KEY, run_cli

ROOT = Path(__file__).resolve().parents[2]
LOADER = ROOT / "bench" / "bulk_load.py"
N = 500


def run_loader(db_url: str, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, OPENPSE_MASTER_KEY=TEST_MASTER_KEY, OPENPSE_DATA_DIR=str(tmp))
    return subprocess.run(
        [sys.executable, str(LOADER), "--database-url", db_url, *args],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )


@pytest.fixture(scope="module")
def loaded(migrated_db: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    res = run_loader(migrated_db, tmp_path_factory.mktemp("bulk"), "--payments", str(N),
                     "--chunk", "200", "--currency", "JPY")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1, res.stdout
    return dict(json.loads(lines[0]))


def test_result_line(loaded: dict[str, Any]) -> None:
    assert loaded["payments"] == N
    assert loaded["database"] in ("sqlite", "postgresql")
    assert loaded["seconds"] >= 0 and loaded["rows_per_s"] > 0
    assert loaded["rows"] == N * 11  # pm, payment, 3 events, attempt, acquirer row, journal, 3
    assert loaded["merchant_id"].startswith("mch_")
    assert loaded["access_key"].startswith("ak_test_") and loaded["secret"]


async def _loaded_ids(services: Any, merchant_id: str) -> list[str]:
    async with services.db.read() as conn:
        rows = (await conn.execute(select(t.payments.c.id).where(
            t.payments.c.merchant_id == merchant_id))).all()
    return [r.id for r in rows]


async def test_ledger_verifies_and_balances_match(services: Any, loaded: dict[str, Any]) -> None:
    assert not await ledger_problems(services)
    m = loaded["merchant_id"]
    async with services.db.read() as conn:
        rows = (await conn.execute(select(t.payments.c.amount, t.payments.c.fee).where(
            t.payments.c.merchant_id == m))).all()
    assert len(rows) == N
    total, fees = sum(r.amount for r in rows), sum(r.fee for r in rows)
    assert all(r.fee == ledger.fee_for(None, "card", "JPY", r.amount) for r in rows)
    assert await merchant_balances(services, m) == {
        ("acquirer_receivable", "JPY"): total,
        ("merchant_pending", "JPY"): -(total - fees),
        ("platform_fees", "JPY"): -fees,
    }


def _shape(value: Any) -> Any:
    """A value's structure: dict keys (recursively) and JSON types, not the values."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(v) for v in value]
    return type(value).__name__


async def test_rows_are_what_a_real_payment_writes(
    services: Any, server: Any, loaded: dict[str, Any]
) -> None:
    """One real create+confirm through the API for the same merchant, compared row by row with
    a loaded payment: same columns set, same JSON structure, same events and journal."""
    kit = MerchantKit(loaded["merchant_id"], loaded["access_key"], loaded["secret"],
                      server.base_url)
    real = kit.raw().post("/v1/payments", payment_body(amount=1234, currency="JPY",
                                                       order="real-1"))
    assert real.status_code == 201, real.text
    real_id = real.json()["id"]
    ids = sorted(set(await _loaded_ids(services, kit.merchant_id)) - {real_id})
    assert len(ids) == N
    bulk_id = ids[-1]
    assert real_id > bulk_id  # made after the load: newest

    real_row, bulk_row = await payment_row(services, real_id), await payment_row(services, bulk_id)
    assert real_row.keys() == bulk_row.keys()
    for col in real_row:
        assert (real_row[col] is None) == (bulk_row[col] is None), col
    assert _shape(real_row["payment_method"]) == _shape(bulk_row["payment_method"])
    for col in ("status", "currency", "capture_method", "payment_method_type", "connector",
                "version", "amount_capturable", "amount_refunded", "metadata"):
        assert real_row[col] == bulk_row[col], col
    assert bulk_row["amount_received"] == bulk_row["amount"]
    assert bulk_row["captured_at"] == bulk_row["created"] == bulk_row["updated"]

    real_events, bulk_events = (await payment_events(services, real_id),
                                await payment_events(services, bulk_id))
    assert [e["type"] for e in real_events] == [e["type"] for e in bulk_events] == [
        "payment.created", "payment.processing", "payment.succeeded"]
    for re_, be in zip(real_events, bulk_events, strict=True):
        re_.pop("request"), be.pop("request")
        assert _shape(re_) == _shape(be)
        assert re_["data"]["previous_attributes"].keys() == \
            be["data"]["previous_attributes"].keys()
        assert be["data"]["object"]["id"] == bulk_id
    assert [e["id"] for e in bulk_events] == sorted(e["id"] for e in bulk_events)
    assert bulk_events[-1]["data"]["object"] == svc_payments.payment_view(bulk_row)

    def kinds(js: list[dict[str, Any]]) -> list[Any]:
        return [(j["kind"], [(k, m is not None, c, a > 0) for k, m, c, a in j["postings"]])
                for j in js]

    assert kinds(await journals_for(services, real_id)) == kinds(
        await journals_for(services, bulk_id))

    async with services.db.read() as conn:
        for table, key in ((t.payment_attempts, t.payment_attempts.c.payment_id),
                           (t.journals, t.journals.c.reference_id)):
            rr = (await conn.execute(select(table).where(key == real_id))).one()._mapping
            br = (await conn.execute(select(table).where(key == bulk_id))).one()._mapping
            assert {k: v is None for k, v in rr.items()} == {k: v is None for k, v in br.items()}
        att = (await conn.execute(select(t.payment_attempts).where(
            t.payment_attempts.c.payment_id == bulk_id))).one()
        real_att = (await conn.execute(select(t.payment_attempts).where(
            t.payment_attempts.c.payment_id == real_id))).one()
        assert att.raw == real_att.raw and att.status == "succeeded"
        assert att.connector_reference == bulk_row["connector_reference"]
        sim = (await conn.execute(select(t.simulator_operations).where(
            t.simulator_operations.c.reference == att.id))).one()
        assert sim.result["connector_reference"] == att.connector_reference
        assert sim.operation == "sale" and sim.amount == bulk_row["amount"]
        pm = (await conn.execute(select(t.payment_methods).where(
            t.payment_methods.c.id == bulk_row["payment_method_id"]))).one()
    # The vaulted number decrypts under the server's key, bound to its own row.
    assert services.secrets.decrypt(pm.number_enc, context=f"pan:{pm.id}") == "4242424242424242"
    assert pm.fingerprint == bulk_row["payment_method"]["card"]["fingerprint"]
    assert not await ledger_problems(services)


async def test_api_serves_loaded_payments(
    services: Any, server: Any, loaded: dict[str, Any]
) -> None:
    kit = MerchantKit(loaded["merchant_id"], loaded["access_key"], loaded["secret"],
                      server.base_url)
    raw = kit.raw()
    ids = sorted(await _loaded_ids(services, kit.merchant_id), reverse=True)
    seen: list[str] = []
    cursor = None
    while True:  # newest first, page by page, every payment exactly once
        q = "/v1/payments?limit=100" + (f"&cursor={cursor}" if cursor else "")
        page = raw.get(q).json()
        seen += [p["id"] for p in page["data"]]
        if not page["has_more"]:
            break
        cursor = page["next_cursor"]
    assert seen == ids
    created = [p["created"] for p in raw.get("/v1/payments?limit=100").json()["data"]]
    assert created == sorted(created, reverse=True)

    async with services.db.read() as conn:
        pay_id = (await conn.execute(select(t.payments.c.id).where(
            t.payments.c.merchant_id == kit.merchant_id,
            t.payments.c.merchant_order_id.like("bulk%")).order_by(t.payments.c.id)
            .offset(N // 2).limit(1))).scalar_one()
    got = raw.get(f"/v1/payments/{pay_id}")
    assert got.status_code == 200
    view = got.json()
    assert view["status"] == "succeeded" and view["object"] == "payment"
    assert view["amount_received"] == view["amount"] and view["payment_method"]["card"][
        "last4"] == "4242"
    assert view == await svc_payments.get_payment(services, Caller(kit.merchant_id, False),
                                                  pay_id)
    by_order = raw.get(f"/v1/payments?merchant_order_id={view['merchant_order_id']}").json()
    assert [p["id"] for p in by_order["data"]] == [pay_id]
    succeeded = raw.get("/v1/payments?status=succeeded&limit=5").json()["data"]
    assert [p["id"] for p in succeeded] == seen[:5]
    assert raw.get("/v1/payments?status=failed").json()["data"] == []
    sec = (await payment_row(services, pay_id))["created"]
    in_range = raw.get(f"/v1/payments?created_gte={view['created']}&created_lt={sec + 1}"
                       ).json()["data"]
    assert [p["id"] for p in in_range] == [pay_id]

    evs = raw.get(f"/v1/events?object_id={pay_id}").json()["data"]
    assert [e["type"] for e in evs] == ["payment.succeeded", "payment.processing",
                                        "payment.created"]
    assert evs[0]["data"]["object"] == view
    typed = raw.get("/v1/events?type=payment.succeeded&limit=3").json()["data"]
    assert len(typed) == 3 and all(e["type"] == "payment.succeeded" for e in typed)
    assert raw.get(f"/v1/events/{evs[-1]['id']}").json() == evs[-1]


class _Rollback(Exception):
    pass


async def test_verify_reports_every_kind_of_problem(services: Any, loaded: dict[str, Any]
                                                    ) -> None:
    """Break the books inside a transaction, verify on that transaction, roll back."""
    m = loaded["merchant_id"]
    with pytest.raises(_Rollback):
        async with services.db.transaction() as tx:
            acct = (await tx.execute(select(t.ledger_accounts.c.id).where(
                t.ledger_accounts.c.merchant_id == m,
                t.ledger_accounts.c.kind == "acquirer_receivable"))).scalar_one()
            journal = (await tx.execute(select(t.journals.c.id).where(
                t.journals.c.merchant_id == m).limit(1))).scalar_one()
            empty_id = PREFIXES["journal"] + "0" * 25 + "1"
            await tx.execute(insert(t.journals).values(
                id=empty_id, merchant_id=m, livemode=False, kind="capture",
                reference_id="pay_x", created=0))
            await tx.execute(insert(t.postings).values(
                journal_id=journal, account_id=acct, currency="JPY", amount=7))
            await tx.execute(update(t.ledger_balances).where(t.ledger_balances.c.account_id == acct,
                                                             t.ledger_balances.c.slot == 0)
                             .values(balance=t.ledger_balances.c.balance + 7 + 5))
            rep = await verify_ledger(tx)
            assert rep.journals >= N + 1 and rep.postings >= 3 * N + 1
            problems = "\n".join(rep.problems)
            assert f"journal {journal} does not balance in JPY: 7" in problems
            assert f"journal {empty_id} has no postings" in problems
            assert f"account {acct} balance" in problems and "!= sum of postings" in problems
            assert "accounts (test, JPY) sum to 12, not zero" in problems
            assert not rep.ok and rep.as_dict()["ok"] is False
            raise _Rollback
    assert not await ledger_problems(services)


@pytest.mark.skipif(BACKEND != "sqlite", reason="the loader's own SQLite file; once is enough")
def test_sqlite_fast_path_leaves_a_wal_database_that_verifies(tmp_path: Path) -> None:
    """With the file to itself the loader leaves WAL for the load, and puts WAL back."""
    url = f"sqlite:///{tmp_path / 'own.db'}"
    env = dict(os.environ, OPENPSE_MASTER_KEY=TEST_MASTER_KEY, OPENPSE_DATA_DIR=str(tmp_path))
    assert run_cli(["migrate", "--database-url", url], env).returncode == 0
    res = run_loader(url, tmp_path, "--payments", "60", "--chunk", "25")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["sqlite_journal"] == "memory"
    with sqlite3.connect(tmp_path / "own.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("SELECT count(*) FROM payments").fetchone()[0] == 60
    verify = run_cli(["ledger", "verify", "--json", "--database-url", url], env)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert json.loads(verify.stdout.strip().splitlines()[-1])["journals"] == 60


def test_refuses_a_database_that_is_not_migrated(tmp_path: Path) -> None:
    res = run_loader(f"sqlite:///{tmp_path / 'fresh.db'}", tmp_path, "--payments", "10")
    assert res.returncode == 2
    assert "not migrated" in res.stderr and "openpse migrate" in res.stderr
    assert res.stdout == ""


def test_refuses_an_unknown_merchant(migrated_db: str, tmp_path: Path) -> None:
    res = run_loader(migrated_db, tmp_path, "--payments", "10", "--merchant-id", "mch_nope")
    assert res.returncode == 2 and "no merchant" in res.stderr


def test_ids_are_the_projects_format() -> None:
    import random

    from openpse.domain import ids

    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import bulk_load
    finally:
        sys.path.remove(str(ROOT / "bench"))
    rnd = random.Random(7)
    for _ in range(200):
        value = rnd.getrandbits(128)
        assert bulk_load.encode_id("pay_", value) == "pay_" + ids._encode(value, 26)
    made = [bulk_load.object_id("evt_", 1_700_000_000_000, seq, rnd) for seq in range(7)]
    assert made == sorted(made) and len(set(made)) == 7
