"""Generic row access for the resource tables: scoped loads (optionally row-locked) and
versioned updates. Every resource read is scoped to (merchant, mode), so another merchant's or
the other mode's id is simply not found."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table, select, update

from openpse.domain.errors import NotFound
from openpse.storage.db import Tx

__all__ = ["load_scoped", "update_versioned"]


async def load_scoped(
    tx: Tx, table: Table, object_id: str, *, merchant_id: str, livemode: bool, lock: bool = False,
    what: str = "object", param: str = "id",
) -> dict[str, Any]:
    stmt = select(table).where(table.c.id == object_id, table.c.merchant_id == merchant_id,
                               table.c.livemode == livemode)
    if lock and tx.dialect.name != "sqlite":  # SQLite: the single writer already serialises
        stmt = stmt.with_for_update()
    row = (await tx.execute(stmt)).first()
    if row is None:
        raise NotFound(f"no such {what}: {object_id!r}", code="resource_missing", param=param)
    return dict(row._mapping)


async def update_versioned(
    tx: Tx, table: Table, row: dict[str, Any], values: dict[str, Any], *, now: int
) -> dict[str, Any]:
    """Apply ``values`` to ``row`` (already locked), bump ``version``; returns the new row."""
    new = {**row, **values, "updated": now, "version": row["version"] + 1}
    res = await tx.execute(
        update(table).where(table.c.id == row["id"], table.c.version == row["version"])
        .values(**values, updated=now, version=row["version"] + 1))
    if res.rowcount != 1:  # a lost update would mean a missing lock: never continue silently
        raise RuntimeError(f"concurrent update of {row['id']} (version {row['version']})")
    return new
