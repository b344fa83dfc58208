"""The replay store: a nonce is accepted once per access key inside the timestamp window.

Database-backed by default (a primary key on (key, nonce) makes the check race-free across any
number of processes); Redis ``SET NX EX`` when ``OPENPSE_REDIS_URL`` is set. Expired database
rows are removed by the worker's housekeeping job.
"""

from __future__ import annotations

from typing import Any, Protocol

from sqlalchemy.exc import IntegrityError

from openpse.storage.db import Database
from openpse.storage.direct import direct
from openpse.storage.tables import nonces

__all__ = ["DatabaseNonceStore", "NonceStore", "RedisNonceStore"]


class NonceStore(Protocol):
    async def remember(self, key_id: str, nonce: str, *, now_s: int, ttl_s: int) -> bool:
        """True the first time; False when this nonce was already used with this key."""
        ...


class DatabaseNonceStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def remember(self, key_id: str, nonce: str, *, now_s: int, ttl_s: int) -> bool:
        try:
            async with self._db.transaction() as tx:
                await direct(tx).insert(nonces, {"access_key_id": key_id, "nonce": nonce,
                                                 "expires_at": now_s + ttl_s})
        except IntegrityError:
            return False
        return True


class RedisNonceStore:
    def __init__(self, client: Any) -> None:
        self._redis = client

    async def remember(self, key_id: str, nonce: str, *, now_s: int, ttl_s: int) -> bool:
        return bool(await self._redis.set(f"openpse:nonce:{key_id}:{nonce}", 1, nx=True, ex=ttl_s))
