"""The hot lookups of one payment or refund are planned on the primary key, also where the
database has no statistics yet (a new database, before autovacuum's first ANALYZE).

With the (merchant, mode) scope in the WHERE as well, PostgreSQL's generic plan for an
unanalysed table tied the primary key with the ``(merchant_id, livemode, status, id)``
index and took the latter: every index entry of the merchant's rows read to find one row
(``storage.repos.in_scope``). Temporary tables are never analysed by autovacuum, so a copy of
the tables' shape in ``pg_temp`` (searched first, so the statements' unqualified names find
it) keeps that condition for as long as the test runs. SQLite is asked the same of its
statements on the real tables, which it has no statistics for either."""

from __future__ import annotations

import json
import re
from typing import Any

from openpse.services import payments as payment_service
from openpse.services import refunds as refund_service
from openpse.storage import repos
from tests.conftest import BACKEND

ROWS = 2_000  # one merchant's payments, a refund of each (400 did not tip the plan)

STATEMENTS = {
    "load_scoped(payments)": repos._PLAIN.format("payments"),
    "load_scoped(payments, lock=True)": repos._LOCKED.format("payments"),
    "load_scoped(refunds, lock=True)": repos._LOCKED.format("refunds"),
    "the answer's payment lock": payment_service._LOCK_WITH_ATTEMPT + " FOR UPDATE OF p",
    "a confirm's or capture's lock": payment_service._LOCK_WITH_PENDING + " FOR UPDATE OF p",
    "a refund answer's lock": refund_service._FOR_ANSWER + " FOR UPDATE OF p",
}
KEYED = {"payments", "refunds", "payment_attempts", "merchants"}
ALIASES = {"p": "payments", "r": "refunds", "a": "payment_attempts", "m": "merchants",
           "x": "payment_attempts"}
# Besides the primary key: the payment's attempts found by its id (a payment has a few).
BY_PAYMENT = {"a confirm's or capture's lock": ("payment_attempts", "payment_id")}


def _numbered(sql: str) -> tuple[str, list[str]]:
    """``:name`` parameters as ``$1..$n`` (PostgreSQL) and the names in that order."""
    names: list[str] = []

    def _sub(m: re.Match[str]) -> str:
        if m.group(1) not in names:
            names.append(m.group(1))
        return f"${names.index(m.group(1)) + 1}"

    return re.sub(r"(?<!:):([a-z_]+)", _sub, sql), names


def _scans(plan: dict[str, Any]) -> list[tuple[str, str, str | None]]:
    found = []
    if "Relation Name" in plan:
        found.append((plan["Relation Name"], plan["Node Type"], plan.get("Index Name")))
    for child in plan.get("Plans", ()):
        found.extend(_scans(child))
    return found


async def _pg_plans(db_url: str) -> dict[str, list[tuple[str, str, str | None]]]:
    import asyncpg

    conn = await asyncpg.connect(db_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        for table in sorted(KEYED):
            await conn.execute(f"CREATE TEMP TABLE {table} (LIKE public.{table} "
                               "INCLUDING INDEXES)")
            not_null = await conn.fetch(
                "SELECT attname FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0"
                " AND attnotnull AND attname <> 'id'", f"pg_temp.{table}")
            for col in not_null:
                await conn.execute(f'ALTER TABLE {table} ALTER COLUMN "{col[0]}" DROP NOT NULL')
        await conn.execute("INSERT INTO merchants (id) VALUES ('mch_plan')")
        await conn.execute(
            "INSERT INTO payments (id, merchant_id, livemode, status) SELECT 'pay_' || i, "
            "'mch_plan', false, 'succeeded' FROM generate_series(1, $1) i", ROWS)
        await conn.execute(
            "INSERT INTO refunds (id, merchant_id, livemode, status, payment_id) SELECT "
            "'re_' || i, 'mch_plan', false, 'succeeded', 'pay_' || i "
            "FROM generate_series(1, $1) i", ROWS)
        await conn.execute(
            "INSERT INTO payment_attempts (id, payment_id) SELECT 'att_' || i, 'pay_' || i "
            "FROM generate_series(1, $1) i", ROWS)
        await conn.execute("SET plan_cache_mode = force_generic_plan")  # as after 5 runs
        plans = {}
        for n, (what, sql) in enumerate(STATEMENTS.items()):
            numbered, names = _numbered(sql)
            await conn.execute(f"PREPARE q{n} AS {numbered}")
            args = ", ".join("NULL" for _ in names)
            doc = await conn.fetchval(f"EXPLAIN (FORMAT JSON) EXECUTE q{n}({args})")
            plans[what] = _scans(json.loads(doc)[0]["Plan"])
        return plans
    finally:
        await conn.close()


async def _sqlite_plans(services: Any) -> dict[str, list[tuple[str, str, str | None]]]:
    from sqlalchemy import text

    plans = {}
    async with services.db.read() as conn:
        for what, sql in STATEMENTS.items():
            sql = sql.replace(" FOR UPDATE OF p", "").replace(" FOR UPDATE", "")
            _, names = _numbered(sql)
            rows = (await conn.execute(text("EXPLAIN QUERY PLAN " + sql),
                                       dict.fromkeys(names))).all()
            scans = []
            for row in rows:
                m = re.match(r"(SEARCH|SCAN) (\w+)(?: AS \w+)?(?: USING (?:COVERING )?"
                             r"(?:INDEX (\w+)|(INTEGER PRIMARY KEY)))?", row[-1])
                if m:
                    scans.append((ALIASES.get(m.group(2), m.group(2)), m.group(1),
                                  m.group(3) or m.group(4)))
            plans[what] = scans
    return plans


async def test_one_row_lookups_use_the_primary_key_without_statistics(
    services: Any, db_url: str
) -> None:
    plans = await (_sqlite_plans(services) if BACKEND == "sqlite" else _pg_plans(db_url))
    primary = ("_pkey", "sqlite_autoindex_") if BACKEND != "sqlite" else ("sqlite_autoindex_",)
    for what, scans in plans.items():
        keyed = [s for s in scans if s[0] in KEYED]
        assert keyed, (what, scans)
        for table, node, index in keyed:
            ok = index is not None and (index.endswith("_pkey") or index.startswith(primary))
            by_payment = BY_PAYMENT.get(what)
            ok = ok or (by_payment is not None and table == by_payment[0]
                        and index is not None and by_payment[1] in index)
            assert ok, f"{what}: {table} read by {node} {index}, not its primary key: {scans}"


def test_placeholders_are_numbered_in_order() -> None:
    assert _numbered("a = :id AND b = :att OR c = :id::text") == (
        "a = $1 AND b = $2 OR c = $1::text", ["id", "att"])

