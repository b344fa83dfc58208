"""Schema migrations with Alembic, driven from code (no alembic.ini needed).

``upgrade(url)`` brings a database to the newest revision; ``pending(url)`` tells whether a
database is behind, so ``serve`` can refuse to start and name the command that fixes it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import create_async_engine

__all__ = ["SchemaBehind", "alembic_config", "ensure_schema", "head_revision", "pending",
           "upgrade"]

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


class SchemaBehind(RuntimeError):
    """The database schema is older than this code."""


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


async def current_revision(url: str) -> str | None:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:

            def _rev(sync_conn: Any) -> str | None:
                return MigrationContext.configure(sync_conn).get_current_revision()

            return await conn.run_sync(_rev)
    finally:
        await engine.dispose()


async def pending(url: str) -> bool:
    return await current_revision(url) != head_revision()


def upgrade(url: str, revision: str = "head") -> None:
    """Run migrations (blocking). Call from sync code or a worker thread."""
    command.upgrade(alembic_config(url), revision)


async def upgrade_async(url: str) -> None:
    await asyncio.to_thread(upgrade, url)


def ensure_schema(url: str, *, create: bool) -> None:
    """``create`` (the embedded database): create or upgrade the schema. Otherwise refuse a
    schema that is behind, naming the command that fixes it. Imports nothing of the API, so a
    command that needs only the database starts in a fraction of the time."""
    if create:
        upgrade(url)
        return
    if asyncio.run(pending(url)):
        raise SchemaBehind(
            "the database schema is behind this version of OpenPSE; run `openpse migrate` "
            "(with the same --database-url) and start again"
        )
