"""The replay store: a nonce is accepted once per access key inside the timestamp window.

Database-backed by default (a primary key on (key, nonce) makes the check race-free across any
number of processes); Redis ``SET NX EX`` when ``OPENPSE_REDIS_URL`` is set. Expired database
rows are removed by the worker's housekeeping job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy.exc import IntegrityError

from openpse.storage.db import Database, Tx
from openpse.storage.direct import direct
from openpse.storage.tables import nonces

__all__ = ["DatabaseNonceStore", "NonceStore", "PendingNonce", "RedisNonceStore"]


class NonceStore(Protocol):
    async def remember(self, key_id: str, nonce: str, *, now_s: int, ttl_s: int) -> bool:
        """True the first time; False when this nonce was already used with this key."""
        ...


@dataclass(frozen=True)
class PendingNonce:
    """A checked request's nonce not written yet: it is written in the request's first write
    transaction (the idempotency claim), saving a transaction of its own."""

    key_id: str
    nonce: str
    expires_at: int

    async def insert(self, tx: Tx) -> None:
        """Insert it inside ``tx``; IntegrityError when it was already used."""
        await direct(tx).insert(nonces, {"access_key_id": self.key_id, "nonce": self.nonce,
                                         "expires_at": self.expires_at})

    async def write(self, tx: Tx) -> bool:
        """Insert it inside ``tx``; False when it was already used (``tx`` is then unusable on
        PostgreSQL: the caller rolls it back)."""
        try:
            await self.insert(tx)
        except IntegrityError:
            return False
        return True


class DatabaseNonceStore:
    # The pipeline may defer the insert into the idempotency claim's transaction.
    deferrable = True

    def __init__(self, db: Database) -> None:
        self._db = db

    async def remember(self, key_id: str, nonce: str, *, now_s: int, ttl_s: int) -> bool:
        try:
            async with self._db.transaction() as tx:
                await PendingNonce(key_id, nonce, now_s + ttl_s).insert(tx)
        except IntegrityError:
            return False
        return True


class RedisNonceStore:
    def __init__(self, client: Any) -> None:
        self._redis = client

    async def remember(self, key_id: str, nonce: str, *, now_s: int, ttl_s: int) -> bool:
        return bool(await self._redis.set(f"openpse:nonce:{key_id}:{nonce}", 1, nx=True, ex=ttl_s))
