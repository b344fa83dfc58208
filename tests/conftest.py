"""Test fixtures: a real database (SQLite or PostgreSQL, chosen by OPENPSE_TEST_DB), a real
``openpse serve`` subprocess, and merchants made through the service layer.

    OPENPSE_TEST_DB=sqlite      (default) an embedded database file per session
    OPENPSE_TEST_DB=postgresql  a fresh database on OPENPSE_TEST_PG_URL
                                (default postgresql://postgres@127.0.0.1:5432/test), dropped after

Under CI=true an unreachable PostgreSQL fails the run; elsewhere the PostgreSQL run is skipped.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from openpse.config import Settings
from tests.support.servers import TEST_ADMIN_TOKEN, TEST_MASTER_KEY, ServerProcess, run_cli
from tests.support.signer import RawClient

BACKEND = os.environ.get("OPENPSE_TEST_DB", "sqlite")
PG_BASE_URL = os.environ.get("OPENPSE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_report_header(config: pytest.Config) -> str:
    return f"openpse backend: {BACKEND}"


async def _pg_admin(sql: str) -> None:
    import asyncpg

    dsn = PG_BASE_URL.replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def db_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if BACKEND == "sqlite":
        path = tmp_path_factory.mktemp("db") / "openpse.db"
        yield f"sqlite:///{path}"
        return
    if BACKEND != "postgresql":
        raise pytest.UsageError(f"OPENPSE_TEST_DB must be sqlite or postgresql, not {BACKEND!r}")
    name = "openpse_t_" + secrets.token_hex(6)
    try:
        asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        if IN_CI:
            pytest.exit(
                f"PostgreSQL at {PG_BASE_URL} is unreachable under CI=true: {exc}", returncode=3
            )
        pytest.skip(f"PostgreSQL unreachable: {exc}")
    base = PG_BASE_URL.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    try:
        asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    except Exception:
        pass


@pytest.fixture(scope="session")
def migrated_db(db_url: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    env = dict(
        os.environ,
        OPENPSE_MASTER_KEY=TEST_MASTER_KEY,
        OPENPSE_DATA_DIR=str(tmp_path_factory.mktemp("migrate")),
    )
    res = run_cli(["migrate", "--database-url", db_url], env)
    assert res.returncode == 0, res.stderr
    return db_url


@pytest.fixture(scope="session")
def test_settings(migrated_db: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    from pydantic import SecretStr

    return Settings(
        database_url=migrated_db,
        master_key=SecretStr(TEST_MASTER_KEY),
        data_dir=tmp_path_factory.mktemp("svc"),
        admin_token=SecretStr(TEST_ADMIN_TOKEN),
        allow_local_webhooks=True,
    )


@pytest.fixture(scope="session")
async def services(test_settings: Settings) -> AsyncIterator[Any]:
    from openpse.bootstrap import build_services

    svc = build_services(test_settings)
    yield svc
    await svc.db.dispose()


def make_server(db_url: str, tmp: Path, **env: str) -> ServerProcess:
    return ServerProcess(
        database_url=db_url, data_dir=tmp, log_file=tmp / "server.log", env_extra=env
    )


@pytest.fixture(scope="session")
def server(migrated_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = make_server(migrated_db, tmp_path_factory.mktemp("server")).start()
    yield srv
    srv.stop()


@dataclass
class MerchantKit:
    merchant_id: str
    access_key: str
    secret: str
    base_url: str

    def raw(self) -> RawClient:
        return RawClient(self.base_url, self.access_key, self.secret)

    def sdk(self, **kw: Any) -> Any:
        from openpse_sdk import OpenPSE

        return OpenPSE(self.base_url, self.access_key, self.secret, **kw)


async def new_merchant(
    services: Any, base_url: str, *, livemode: bool = False, approve: bool = False, **key_kw: Any
) -> MerchantKit:
    from openpse.services import merchants as m

    merchant = await m.create_merchant(
        services, name=f"Shop {uuid.uuid4().hex[:6]}", kyc_approved=approve or livemode
    )
    issued = await m.create_access_key(services, merchant["id"], livemode=livemode, **key_kw)
    return MerchantKit(merchant["id"], issued.key["id"], issued.secret, base_url)


@pytest.fixture
async def merchant(services: Any, server: ServerProcess) -> MerchantKit:
    return await new_merchant(services, server.base_url)


@pytest.fixture
async def shop(services: Any) -> Any:
    """An in-process caller (a sandbox merchant with no server): for calling services
    directly."""
    from openpse.services.context import Caller

    kit = await new_merchant(services, "http://127.0.0.1:9")
    return Caller(kit.merchant_id, False)
