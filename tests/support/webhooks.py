"""Helpers of the webhook tests: an isolated database, merchants, events, a delivery runner.

Tests that drive the delivery job themselves (with a shifted clock) need a database no
``openpse serve`` worker polls, or that worker would deliver their events first; ``fresh_db``
makes one (SQLite file or PostgreSQL database, per ``OPENPSE_TEST_DB``) and migrates it.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from openpse.config import Settings, to_async_url
from openpse.services.context import Caller, Services
from tests.conftest import BACKEND, PG_BASE_URL, _pg_admin
from tests.support.servers import TEST_MASTER_KEY

__all__ = ["emit_events", "fresh_db", "isolated_services", "new_caller"]


@asynccontextmanager
async def fresh_db(tmp: Path) -> AsyncIterator[str]:
    """A migrated, empty database URL (sync form, as the CLI takes it); dropped afterwards."""
    from openpse.storage import migrate

    if BACKEND == "sqlite":
        url = f"sqlite:///{tmp / ('wh-' + secrets.token_hex(4) + '.db')}"
        await asyncio.to_thread(migrate.upgrade, to_async_url(url))
        yield url
        return
    name = "openpse_wh_" + secrets.token_hex(6)
    await _pg_admin(f'CREATE DATABASE "{name}"')
    url = f"{PG_BASE_URL.rsplit('/', 1)[0]}/{name}"
    try:
        await asyncio.to_thread(migrate.upgrade, to_async_url(url))
        yield url
    finally:
        await _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def settings_for(url: str, tmp: Path, *, allow_local: bool = True) -> Settings:
    return Settings(database_url=url, master_key=SecretStr(TEST_MASTER_KEY), data_dir=tmp,
                    allow_local_webhooks=allow_local)


@asynccontextmanager
async def isolated_services(url: str, tmp: Path, *, allow_local: bool = True
                            ) -> AsyncIterator[Services]:
    from openpse.bootstrap import build_services

    svc = build_services(settings_for(url, tmp, allow_local=allow_local))
    try:
        yield svc
    finally:
        await svc.db.dispose()


async def new_caller(svc: Services, *, livemode: bool = False) -> Caller:
    from openpse.services import merchants

    merchant = await merchants.create_merchant(svc, name=f"Hooks {uuid.uuid4().hex[:6]}",
                                               kyc_approved=livemode)
    return Caller(merchant_id=merchant["id"], livemode=livemode)


async def emit_events(svc: Services, caller: Caller, count: int, *,
                      type: str = "payment.succeeded", per_tx: int = 250) -> list[str]:
    """``count`` committed events (a payment-like object each), as a state change would."""
    from openpse.services.events import record_event

    ids: list[str] = []
    while len(ids) < count:
        async with svc.db.transaction() as tx:
            for _ in range(min(per_tx, count - len(ids))):
                obj: dict[str, Any] = {"id": "pay_" + secrets.token_hex(8), "object": "payment",
                                       "livemode": caller.livemode, "status": "succeeded",
                                       "amount": 1000, "currency": "JPY", "version": 3}
                event = await record_event(tx, caller=None, merchant_id=caller.merchant_id,
                                           livemode=caller.livemode, type=type, obj=obj,
                                           previous={"status": "processing"}, now=svc.now())
                ids.append(event["id"])
    return ids
