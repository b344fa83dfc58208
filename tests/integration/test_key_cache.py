"""PostgreSQL: each API process keeps the access keys it has read until a notification says they
changed (storage/key_cache.py, migration 0008's triggers).

Against the session's real server: a key it has used is served without a read (shown by a
change it cannot hear, made with the triggers switched off for that one session), a change
any other session makes is refused at once, and without its listening connection the server
reads every key again. In-process: a row read while a change landed is not kept."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import pytest

from openpse.storage.key_cache import KeyCache, listener_name
from tests.conftest import BACKEND, MerchantKit, new_merchant
from tests.support.api_asserts import assert_error

pytestmark = pytest.mark.skipif(BACKEND != "postgresql",
                                reason="SQLite has no notifications and no key cache")

AUTH = "authentication_error"


def _dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def _sql(url: str, sql: str, *args: Any, silent: bool = False) -> None:
    """Run ``sql`` in a session of its own; ``silent``: with triggers off (no notification)."""
    conn = await asyncpg.connect(_dsn(url))
    try:
        async with conn.transaction():
            if silent:
                await conn.execute("SET LOCAL session_replication_role = replica")
            await conn.execute(sql, *args)
    finally:
        await conn.close()


async def _listening(url: str, server: Any) -> int:
    """The server's listening connections (``serve`` with one process: its own pid)."""
    conn = await asyncpg.connect(_dsn(url))
    try:
        return int(await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
            listener_name(server.proc.pid)))
    finally:
        await conn.close()


async def _used(kit: MerchantKit, url: str, server: Any) -> None:
    """Use ``kit``'s key until the server listens (its first request starts the listener; a
    row read before the listener is in force is not kept), then once more so it is kept."""
    raw = kit.raw()
    deadline = time.monotonic() + 10
    while True:
        assert raw.get("/v1/account").status_code == 200
        if await _listening(url, server) > 0:
            break
        assert time.monotonic() < deadline, "the server never started listening"
        await asyncio.sleep(0.05)
    assert raw.get("/v1/account").status_code == 200


async def _refused_within(kit: MerchantKit, code: str, status: int, seconds: float) -> None:
    raw = kit.raw()
    start = time.monotonic()
    while True:
        res = raw.get("/v1/account")
        if res.status_code != 200:
            assert_error(res, status, AUTH if status == 401 else "permission_error", code)
            return
        assert time.monotonic() - start < seconds, f"still accepted after {seconds} s"
        await asyncio.sleep(0.01)


async def test_a_used_key_is_served_without_a_read(services, server, migrated_db):
    kit = await new_merchant(services, server.base_url)
    await _used(kit, migrated_db, server)
    # Revoked behind the server's back (no notification): the kept row still lets it in,
    # which a read would not.
    await _sql(migrated_db, "UPDATE access_keys SET status = 'revoked' WHERE id = $1",
               kit.access_key, silent=True)
    assert kit.raw().get("/v1/account").status_code == 200
    # Any announced change to the merchant drops its keys: the read finds the revocation.
    await _sql(migrated_db, "UPDATE merchants SET name = name WHERE id = $1",
               kit.merchant_id)
    await _refused_within(kit, "key_revoked", 401, 2)


@pytest.mark.parametrize("change, code, status", [
    ("UPDATE access_keys SET status = 'revoked' WHERE id = $1", "key_revoked", 401),
    ("UPDATE access_keys SET expires_at = 1 WHERE id = $1", "key_revoked", 401),
    ("UPDATE access_keys SET ip_allowlist = '[\"203.0.113.0/24\"]' WHERE id = $1",
     "ip_not_allowed", 403),
    ("UPDATE merchants SET status = 'suspended' WHERE id = "
     "(SELECT merchant_id FROM access_keys WHERE id = $1)", "merchant_not_active", 403),
    ("DELETE FROM access_keys WHERE id = $1", "unknown_access_key", 401),
])
async def test_a_change_from_another_session_is_refused_at_once(
        services, server, migrated_db, change, code, status):
    kit = await new_merchant(services, server.base_url)
    await _used(kit, migrated_db, server)
    await _sql(migrated_db, change, kit.access_key)
    await _refused_within(kit, code, status, 2)


async def test_without_its_listener_the_server_reads_every_key(services, server, migrated_db):
    kit = await new_merchant(services, server.base_url)
    await _used(kit, migrated_db, server)
    conn = await asyncpg.connect(_dsn(migrated_db))
    try:
        name = listener_name(server.proc.pid)
        ended = await conn.fetchval(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = $1) t", name)
        assert ended == 1
        deadline = time.monotonic() + 5
        while await conn.fetchval("SELECT count(*) FROM pg_stat_activity "
                                  "WHERE application_name = $1", name):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
    finally:
        await conn.close()
    await asyncio.sleep(0.2)  # the server notices its listener is gone
    # A change it cannot hear is still seen: with no listener nothing is served from memory.
    await _sql(migrated_db, "UPDATE access_keys SET status = 'revoked' WHERE id = $1",
               kit.access_key, silent=True)
    assert_error(kit.raw().get("/v1/account"), 401, AUTH, "key_revoked")


async def _until_listening(cache: KeyCache) -> None:
    assert cache.get("ak_test_x") is None  # starts listening
    deadline = time.monotonic() + 10
    while not cache.listening():
        assert time.monotonic() < deadline, "never listening"
        await asyncio.sleep(0.02)


async def test_a_row_read_while_a_change_lands_is_not_kept(migrated_db):
    cache = KeyCache(_dsn(migrated_db))
    try:
        await _until_listening(cache)
        row = {"id": "ak_test_x", "merchant_id": "mch_x"}
        token = cache.token()
        assert token is not None
        # a change to that key announced while "reading" it
        await _sql(migrated_db, "SELECT pg_notify('openpse_auth', 'access_keys:ak_test_x')")
        deadline = time.monotonic() + 5
        while cache.epoch == token:
            assert time.monotonic() < deadline, "the notification never arrived"
            await asyncio.sleep(0.01)
        cache.put("ak_test_x", row, token)
        assert cache.get("ak_test_x") is None
        # read again, nothing in between: kept, and a merchant's change drops its keys
        cache.put("ak_test_x", row, cache.token())
        assert cache.get("ak_test_x") is row
        await _sql(migrated_db, "SELECT pg_notify('openpse_auth', 'merchants:mch_x')")
        deadline = time.monotonic() + 5
        while cache.get("ak_test_x") is not None:
            assert time.monotonic() < deadline, "the merchant's notification never arrived"
            await asyncio.sleep(0.01)
    finally:
        await cache.close()
    assert not cache.listening()


async def test_a_listener_that_cannot_connect_keeps_nothing(migrated_db):
    # a port nothing listens on: the connection is refused, the cache stays off and waits
    # RETRY_S before trying again
    dead = "postgresql://postgres@127.0.0.1:9/none"
    cache = KeyCache(dead, retry_s=60)
    try:
        assert cache.get("ak_test_x") is None  # starts the attempt
        deadline = time.monotonic() + 10
        while cache._connecting is not None:
            assert time.monotonic() < deadline, "the attempt never ended"
            await asyncio.sleep(0.02)
        assert not cache.listening()
        assert cache.token() is None
        cache.put("ak_test_x", {"id": "ak_test_x", "merchant_id": "mch_x"}, cache.token())
        assert cache.get("ak_test_x") is None
        assert cache._connecting is None  # no new attempt before RETRY_S
    finally:
        await cache.close()


async def test_a_truncate_drops_every_kept_key(tmp_path):
    """Migration 0008's statement trigger announces a TRUNCATE as ``<table>:*``; the cache then
    keeps none of the rows it had, and none read before the notification."""
    from tests.support.webhooks import fresh_db

    async with fresh_db(tmp_path) as url:  # a database of its own: it is emptied
        cache = KeyCache(_dsn(url))
        try:
            await _until_listening(cache)
            for key, merchant in (("ak_test_x", "mch_x"), ("ak_test_y", "mch_y")):
                cache.put(key, {"id": key, "merchant_id": merchant}, cache.token())
                assert cache.get(key) is not None
            token = cache.token()
            await _sql(url, "TRUNCATE access_keys CASCADE")
            deadline = time.monotonic() + 5
            while cache.get("ak_test_x") is not None or cache.get("ak_test_y") is not None:
                assert time.monotonic() < deadline, "the TRUNCATE's notification never arrived"
                await asyncio.sleep(0.01)
            assert cache.epoch != token  # a row read across it is not kept
            cache.put("ak_test_x", {"id": "ak_test_x", "merchant_id": "mch_x"}, token)
            assert cache.get("ak_test_x") is None
        finally:
            await cache.close()
