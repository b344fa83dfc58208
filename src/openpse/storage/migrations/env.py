"""Alembic environment: runs migrations on the async engines OpenPSE uses."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from openpse.storage.tables import metadata

config = context.config
target_metadata = metadata


def _do_run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_async(url: str) -> None:
    engine = create_async_engine(url, poolclass=NullPool)
    async with engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            await conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        await conn.run_sync(_do_run)
        await conn.commit()
    await engine.dispose()


def run() -> None:
    url = config.get_main_option("sqlalchemy.url")
    assert url is not None
    if context.is_offline_mode():
        context.configure(url=url, target_metadata=target_metadata, literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(_run_async(url))
    else:  # called from inside a running loop: run in a fresh thread with its own loop
        import threading

        err: list[BaseException] = []

        def _target() -> None:
            try:
                asyncio.run(_run_async(url))
            except BaseException as exc:
                err.append(exc)

        t = threading.Thread(target=_target)
        t.start()
        t.join()
        if err:
            raise err[0]


run()
