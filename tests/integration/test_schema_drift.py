"""The migrations and ``storage/tables.py`` describe the same schema: a database brought up by
``openpse migrate`` (what every test and every operator runs) has exactly the tables, columns,
types, indexes and constraints the code is written against, on both backends. A column added to
one and not the other fails here instead of at the first request that touches it."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from openpse.storage.tables import metadata


def _diff(sync_conn: Any) -> list[Any]:
    ctx = MigrationContext.configure(sync_conn, opts={"compare_type": True})
    return [d for d in compare_metadata(ctx, metadata)
            if not (isinstance(d, tuple) and d[0] == "remove_table"
                    and d[1].name == "alembic_version")]


async def test_migrated_schema_is_the_one_the_code_uses(services: Any) -> None:
    async with services.db.read() as conn:
        diff = await conn.run_sync(_diff)
    assert diff == []
