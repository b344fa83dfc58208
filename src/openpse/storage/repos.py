"""Generic row access for the resource tables: scoped loads (optionally row-locked) and
versioned updates. Every resource read is scoped to (merchant, mode), so another merchant's or
the other mode's id is simply not found. Both run directly on the driver (storage/direct.py):
they are on every request's path."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Table

from openpse.domain.errors import NotFound
from openpse.storage.db import Tx
from openpse.storage.direct import direct
from openpse.storage.rows import page_bounds

__all__ = ["in_scope", "list_page", "load_scoped", "missing", "update_versioned"]


async def load_scoped(
    tx: Tx, table: Table, object_id: str, *, merchant_id: str, livemode: bool, lock: bool = False,
    what: str = "object", param: str = "id",
) -> dict[str, Any]:
    d = direct(tx)
    # SQLite: the single writer already serialises; PostgreSQL: lock the row.
    sql = _LOCKED.format(table.name) if lock and not d.is_sqlite else _PLAIN.format(table.name)
    row = await d.fetchone(sql, {"id": object_id}, table=table, carry=lock)
    if row is None or not in_scope(row, merchant_id, livemode):
        raise missing(what, object_id, param)
    return row


def in_scope(row: Mapping[Any, Any], merchant_id: str, livemode: bool) -> bool:
    """Whether a row found by its primary key belongs to (merchant, mode).

    The scope is checked here, not in the statement's WHERE: with the scope there too, a
    table PostgreSQL has not analysed yet (a new database; autovacuum's first pass comes a
    minute or more later) makes the planner's generic plan tie the primary key with the
    (merchant_id, livemode, status, id) indexes, and it may take one of those, reading every
    index entry of the merchant's rows to find one (measured: the payment lock read 59 buffers
    instead of 3, 0.28 ms instead of 0.01 ms, growing with the merchant's payments).
    Looked up by the key alone, every plan is the primary key's."""
    return row["merchant_id"] == merchant_id and bool(row["livemode"]) == bool(livemode)


def missing(what: str, object_id: str, param: str = "id") -> NotFound:
    """The 404 for a scoped read that found nothing (another merchant's id looks the same)."""
    return NotFound(f"no such {what}: {object_id!r}", code="resource_missing", param=param)


async def list_page(
    tx: Tx, table: Table, *, merchant_id: str, livemode: bool,
    equal: Mapping[str, Any] | None = None, limit: int, cursor: str | None,
    created_gte: int | None, created_lt: int | None, columns: str = "*",
) -> list[dict[str, Any]]:
    """A list page of (merchant, mode)'s rows, newest first by id (ids are time-ordered),
    read on the driver like every resource read (22-27 % less CPU per list request than
    through SQLAlchemy Core). ``equal``: column = value filters, a None value meaning no
    filter; ``columns``: what to select; both named by the code, never by the caller. Up to
    ``limit + 1`` rows: ``page_result`` tells from the extra one that there are more."""
    where = ["merchant_id = :merchant_id", "livemode = :livemode"]
    params: dict[str, Any] = {"merchant_id": merchant_id, "livemode": livemode,
                              "limit": limit + 1}
    for column, value in (equal or {}).items():
        assert column in table.c, column
        if value is None:
            continue
        where.append(f"{column} = :eq_{column}")
        params[f"eq_{column}"] = value
    bounds = page_bounds(table, cursor=cursor, created_gte=created_gte, created_lt=created_lt)
    for i, (column, op, value) in enumerate(bounds):
        where.append(f"{column} {op} :b{i}")
        params[f"b{i}"] = value
    sql = (f"SELECT {columns} FROM {table.name} WHERE {' AND '.join(where)} "
           "ORDER BY id DESC LIMIT :limit")
    return await direct(tx).fetchall(sql, params, table=table)


_PLAIN = "SELECT * FROM {} WHERE id = :id"  # the scope: ``in_scope``
_LOCKED = _PLAIN + " FOR UPDATE"


async def update_versioned(
    tx: Tx, table: Table, row: dict[str, Any], values: dict[str, Any], *, now: int
) -> dict[str, Any]:
    """Apply ``values`` to ``row`` (already locked), bump ``version``; returns the new row."""
    changes = {**values, "updated": now, "version": row["version"] + 1}
    count = await direct(tx).update(table, changes, {"id": row["id"], "version": row["version"]})
    if count != 1:  # a lost update would mean a missing lock: never continue silently
        raise RuntimeError(f"concurrent update of {row['id']} (version {row['version']})")
    return {**row, **changes}
