"""Idempotency keys (CONTRACT §3), after Brandur Leach's design for Stripe-like keys.

The key row is inserted first, in its own transaction, or — for ``POST /v1/payments`` — as
the first statement of the request's own first write transaction (``DeferredClaim``); either
way the unique constraint on (merchant, mode, key) — not a lookup — decides who runs. The
winner runs the request; the response is stored when it finishes and replayed byte-for-byte
afterwards; a create+confirm stores its answer inside the transaction of its last state
change (``store_in``), so the key completes with the commit of the work it describes. A 5xx
unlocks the row (or, for a deferred claim, leaves none) so the client can retry. A process
that dies mid-request leaves the row locked; after ``lock_timeout_s`` another attempt takes
the lock over with a compare-and-set and resumes from the row's recovery point
(``resource_id``: what the first attempt had already created).
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from sqlalchemy import delete, update
from sqlalchemy.exc import IntegrityError

from openpse.api.auth import replayed_nonce
from openpse.api.nonces import PendingNonce
from openpse.crypto import SecretBox
from openpse.domain.errors import IdempotencyFailure, InvalidRequest
from openpse.storage.db import Database, Tx, on_rollback
from openpse.storage.direct import direct
from openpse.storage.tables import idempotency_keys

__all__ = ["Claimed", "DeferredClaim", "IdempotencyStore", "Replay", "kept_headers",
           "request_hash", "request_in_progress", "validate_key"]

RETENTION_S = 24 * 3600 + 3600  # at least 24 h, as the contract promises
MAX_KEY_LENGTH = 255
REPLAYED_HEADER_NAMES = ("content-type",)


def _context(record_id: int) -> str:
    return f"idempotency_response:{record_id}"


_KEY_CHARS = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no space


def validate_key(key: str) -> str:
    if len(key) > MAX_KEY_LENGTH or _KEY_CHARS.fullmatch(key) is None:
        raise InvalidRequest(
            "Idempotency-Key must be 1-255 printable ASCII characters (a UUID is a good choice)",
            code="idempotency_key_invalid",
            param="Idempotency-Key",
        )
    return key


def request_in_progress() -> IdempotencyFailure:
    """Another request holds the key right now (a retry or a concurrent duplicate)."""
    return IdempotencyFailure("a request with this Idempotency-Key is in progress; retry shortly",
                              code="idempotency_request_in_progress")


def kept_headers(headers: dict[str, str]) -> dict[str, str]:
    """The response headers a replay repeats."""
    return {k.lower(): v for k, v in headers.items() if k.lower() in REPLAYED_HEADER_NAMES}


def request_hash(method: str, path: str, query: str, body: bytes) -> str:
    h = hashlib.sha256()
    for part in (method.encode(), path.encode(), query.encode()):
        h.update(part)
        h.update(b"\n")
    h.update(body)
    return h.hexdigest()


@dataclass(frozen=True)
class Replay:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class Claimed:
    record_id: int
    resource_id: str | None  # set when resuming work a crashed attempt had started
    # The response already stored with the request's last state change (``store_in``), as
    # (status, kept headers, body); the pipeline stores what it sends only when it differs.
    stored: tuple[int, dict[str, str], bytes] | None = None


class _NonceUsed(Exception):
    pass


class DeferredClaim:
    """A key claimed by the request's first write transaction instead of one of its own.

    The pipeline uses it where a route's first step is a write transaction and nothing leaves
    the process before it (``POST /v1/payments``). The claim's INSERT (and the deferred nonce)
    run first in that transaction (``storage.db.first_write``), so a payment's creation and
    its key commit together: one transaction fewer. When the key turns out to be taken (a
    retry, or a concurrent request with the same key) that transaction rolls back whole, this
    claim is ``lost``, and the pipeline answers through the usual claim (a replay, a 409 or
    resuming a crashed attempt). When the request writes nothing, the pipeline stores the key
    with its answer in one transaction (``IdempotencyStore.insert_completed``).
    """

    def __init__(self, *, merchant_id: str, livemode: bool, key: str, method: str, path: str,
                 req_hash: str, now: int, nonce: PendingNonce | None) -> None:
        self.merchant_id, self.livemode, self.key = merchant_id, livemode, key
        self.method, self.path, self.req_hash, self.now = method, path, req_hash, now
        self.nonce = nonce
        self.record_id: int | None = None
        self.resource_id: str | None = None
        # The id the route will create, told before its first write: the claim's INSERT then
        # records it (what a retry after a crash resumes from) instead of an UPDATE after it.
        self.planned_resource: str | None = None
        self.stored: tuple[int, dict[str, str], bytes] | None = None
        # pending -> running -> committed; or lost (key taken) / replayed (nonce used)
        self.state = "pending"
        # Only while the route runs: a task it may have started must not claim the key later.
        self.open = True

    def params(self, resource_id: str | None = None) -> dict[str, Any]:
        return {"merchant_id": self.merchant_id, "livemode": self.livemode, "key": self.key,
                "request_hash": self.req_hash, "method": self.method, "path": self.path,
                "locked_at": self.now, "created": self.now,
                "expires_at": self.now + RETENTION_S, "resource_id": resource_id}

    # storage.db.FirstWrite
    def pending(self) -> bool:
        return self.state == "pending" and self.open

    def take(self) -> bool:
        if self.state != "pending" or not self.open:
            return False
        self.state = "running"
        return True

    async def run(self, tx: Tx) -> None:
        d, params = direct(tx), self.params(self.planned_resource)
        if self.nonce is not None and not d.is_sqlite:
            # PostgreSQL: the nonce's INSERT rides in the claim's statement (one round trip);
            # the claim does nothing on a conflict, so a unique violation is the nonce's.
            try:
                got = await d.fetchone(_NONCE_AND_CLAIM_IF_FREE, {
                    **params, "n_key": self.nonce.key_id, "n_nonce": self.nonce.nonce,
                    "n_expires": self.nonce.expires_at})
            except IntegrityError as exc:
                if getattr(exc.orig, "table_name", None) != "nonces":
                    raise
                self.state = "replayed"
                raise replayed_nonce() from None
        else:
            if self.nonce is not None and not await self.nonce.write(tx):
                self.state = "replayed"
                raise replayed_nonce()
            got = await d.fetchone(_CLAIM_IF_FREE, params)
        if got is None:
            self.state = "lost"
            raise request_in_progress()
        self.record_id = int(got["id"])

    # storage.direct.Foldable (PostgreSQL): the claim in the unit's only write statement
    def fold(self) -> tuple[str, dict[str, Any]]:
        """The nonce and the claim as CTEs of the statement that writes the unit (``f``
        returns the claim's id). A plain INSERT: a taken key or a used nonce is a unique
        violation, which stops the whole statement, so nothing is written without its key."""
        params = {f"k_{k}": v for k, v in self.params(self.planned_resource).items()}
        if self.nonce is None:
            return _FOLD_CLAIM, params
        params.update(k_n_key=self.nonce.key_id, k_n_nonce=self.nonce.nonce,
                      k_n_expires=self.nonce.expires_at)
        return _FOLD_NONCE_AND_CLAIM, params

    def folded(self, row: Any) -> None:
        """The statement that carried the claim committed (it ran alone, in autocommit)."""
        self.record_id = int(row["id"])
        self.state = "committed"
        self.nonce = None

    def joined(self, row: Any) -> None:
        """The unit's first read carried the claim (``Direct.fetchone(carry=True)``): written
        in the unit's transaction, which is still open, as after ``run``."""
        self.record_id = int(row["id"])

    def fold_failed(self, exc: IntegrityError) -> None:
        """The carrying statement stopped on a unique violation: the nonce's (a replay) or
        the key's (taken: answered through the usual claim) raise as ``run`` does; another
        table's is re-raised by the caller."""
        table = getattr(exc.orig, "table_name", None)
        if table == "nonces":
            self.state = "replayed"
            raise replayed_nonce() from None
        if table == "idempotency_keys":
            self.state = "lost"
            raise request_in_progress() from None

    def committed(self) -> None:
        if self.state == "running":
            self.state = "committed"
            self.nonce = None  # written with the claim

    def rolled_back(self) -> None:
        if self.state == "running":
            self.state = "pending"
            self.record_id = None
            self.stored = None
            self.planned_resource = None

    # services.context.Caller
    def plan_resource(self, resource_id: str) -> None:
        if self.state == "pending" and self.open:
            self.planned_resource = resource_id

    def records_resource(self, resource_id: str) -> bool:
        """Whether the written claim's row already holds ``resource_id``."""
        return self.record_id is not None and self.planned_resource == resource_id


class IdempotencyStore:
    def __init__(self, db: Database, box: SecretBox, *, lock_timeout_s: int) -> None:
        self._db = db
        # Stored responses can hold secrets shown once (new keys, webhook secrets): they are
        # encrypted at rest like every other secret, bound to their row.
        self._box = box
        self._lock_timeout_s = lock_timeout_s

    async def begin(
        self,
        *,
        merchant_id: str,
        livemode: bool,
        key: str,
        method: str,
        path: str,
        req_hash: str,
        now: int,
        nonce: PendingNonce | None = None,
    ) -> Claimed | Replay:
        """Claim the key, or find who holds it. A deferred request nonce is written in the
        claim's transaction (one transaction for both); if the claim loses, on its own."""
        for _ in range(3):  # bounded: insert, or find the holder (or an expired row to drop)
            try:
                async with self._db.transaction() as tx:
                    if nonce is not None and not await nonce.write(tx):
                        raise replayed_nonce()
                    got = await direct(tx).fetchone(_CLAIM, {
                        "merchant_id": merchant_id, "livemode": livemode, "key": key,
                        "request_hash": req_hash, "method": method, "path": path,
                        "locked_at": now, "created": now, "expires_at": now + RETENTION_S,
                        "resource_id": None})
                    assert got is not None
                    return Claimed(record_id=int(got["id"]), resource_id=None)
            except IntegrityError:
                pass
            if nonce is not None:  # rolled back with the lost claim: write it on its own
                async with self._db.transaction() as tx:
                    if not await nonce.write(tx):
                        raise replayed_nonce()
                nonce = None
            async with self._db.read() as conn:
                found = await direct(conn).fetchone(_FIND, {"m": merchant_id, "l": livemode,
                                                            "k": key}, table=idempotency_keys)
            if found is None:
                continue  # it was deleted (a 5xx) between our insert and read: try again
            row = SimpleNamespace(**found)
            if row.expires_at <= now:
                async with self._db.transaction() as tx:
                    await tx.execute(
                        delete(idempotency_keys).where(idempotency_keys.c.id == row.id)
                    )
                continue
            return await self._existing(row, req_hash, now)
        raise IdempotencyFailure(
            "the request with this Idempotency-Key is still being processed; retry shortly",
            code="idempotency_request_in_progress",
        )

    async def begin_instead(self, claim: DeferredClaim, *, nonce: PendingNonce | None
                            ) -> Claimed | Replay:
        """The usual claim, for a deferred one that found its key taken: the holder's answer
        (a replay, or a 409 / 422 raised), or the key taken over from a crashed holder."""
        return await self.begin(
            merchant_id=claim.merchant_id, livemode=claim.livemode, key=claim.key,
            method=claim.method, path=claim.path, req_hash=claim.req_hash,
            now=int(time.time()), nonce=nonce)

    async def _existing(self, row: Any, req_hash: str, now: int) -> Claimed | Replay:
        if row.request_hash != req_hash:
            raise IdempotencyFailure(
                "this Idempotency-Key was already used with a different request (method, path "
                "or body differ); use a new key for a new request",
                code="idempotency_key_reused",
            )
        if row.status == "completed":
            body = self._box.decrypt_bytes(row.response_body, context=_context(row.id))
            return Replay(row.response_status, dict(row.response_headers or {}), body)
        if row.locked_at is not None and row.locked_at > now - self._lock_timeout_s:
            raise IdempotencyFailure(
                "a request with this Idempotency-Key is still in progress; retry after it "
                "finishes (the same key then replays its response)",
                code="idempotency_request_in_progress",
            )
        async with self._db.transaction() as tx:  # stale lock: take it over, compare-and-set
            res = await tx.execute(
                update(idempotency_keys)
                .where(
                    idempotency_keys.c.id == row.id,
                    idempotency_keys.c.locked_at == row.locked_at,
                    idempotency_keys.c.status == "in_progress",
                )
                .values(locked_at=now)
            )
        if res.rowcount != 1:
            raise request_in_progress()
        return Claimed(record_id=int(row.id), resource_id=row.resource_id)

    async def complete(
        self, record_id: int, *, status: int, headers: dict[str, str], body: bytes
    ) -> None:
        async with self._db.transaction() as tx:
            await self._store(tx, record_id, status, kept_headers(headers), body)

    async def store_in(
        self, tx: Tx, claim: Claimed | DeferredClaim, *, status: int, headers: dict[str, str],
        body: bytes, writes: list[Any] | None = None,
    ) -> None:
        """Complete the key inside ``tx``, the transaction of the request's last state
        change: the answer commits with the work it describes. Should the request end up
        sending something else, the pipeline stores that instead (``complete``). A deferred
        claim not yet written (no id) is left to the pipeline. With ``writes``, the key's
        update is added there for the caller's next statement (same transaction)."""
        if claim.record_id is None:
            return
        kept = kept_headers(headers)
        await self._store(tx, claim.record_id, status, kept, body, writes)
        before, claim.stored = claim.stored, (status, kept, body)

        def not_stored() -> None:  # the request may go on and answer otherwise
            claim.stored = before
        on_rollback(tx, not_stored)

    async def insert_completed(
        self, claim: DeferredClaim, *, status: int, headers: dict[str, str], body: bytes
    ) -> str:
        """A deferred claim whose request wrote nothing: the key, already completed with its
        answer, and the request's nonce, in one transaction. Returns "stored", "taken" (the
        key was claimed meanwhile) or "replayed" (the nonce was used)."""
        kept = kept_headers(headers)
        try:
            async with self._db.transaction() as tx:
                if claim.nonce is not None and not await claim.nonce.write(tx):
                    raise _NonceUsed  # roll back (the transaction is unusable on PostgreSQL)
                got = await direct(tx).fetchone(_CLAIM_IF_FREE, claim.params())
                if got is not None:
                    await self._store(tx, int(got["id"]), status, kept, body)
        except _NonceUsed:
            return "replayed"
        claim.nonce = None  # committed either way
        return "stored" if got is not None else "taken"

    async def _store(self, tx: Tx, record_id: int, status: int, kept: dict[str, str],
                     body: bytes, writes: list[Any] | None = None) -> None:
        write = (idempotency_keys, {
            "status": "completed", "locked_at": None, "response_status": status,
            "response_headers": kept,
            "response_body": self._box.encrypt_bytes(body, context=_context(record_id)),
        }, {"id": record_id})
        if writes is None:
            await direct(tx).write(write)
        else:
            writes.append(write)

    async def release(self, record_id: int) -> None:
        """A 5xx or a refused request: forget the key so a retry runs the work (once)."""
        async with self._db.transaction() as tx:
            await direct(tx).update(idempotency_keys, {"locked_at": 0}, {"id": record_id})


_CLAIM = (
    'INSERT INTO idempotency_keys (merchant_id, livemode, "key", request_hash, method, path, '
    "status, locked_at, created, expires_at, resource_id) VALUES (:merchant_id, :livemode, "
    ":key, :request_hash, :method, :path, 'in_progress', :locked_at, :created, :expires_at, "
    ":resource_id) RETURNING id"
)
_CLAIM_IF_FREE = _CLAIM.replace(" RETURNING id", " ON CONFLICT DO NOTHING RETURNING id")
_NONCE_AND_CLAIM_IF_FREE = (
    "WITH n AS (INSERT INTO nonces (access_key_id, nonce, expires_at) VALUES (:n_key, :n_nonce, "
    ":n_expires)) " + _CLAIM_IF_FREE)
# Direct.defer: the claim (and the nonce) as CTEs of the statement that writes the unit.
_FOLD_CLAIM = "f AS (" + re.sub(r":(\w+)", r":k_\1", _CLAIM) + ")"
_FOLD_NONCE_AND_CLAIM = (
    "n AS (INSERT INTO nonces (access_key_id, nonce, expires_at) VALUES (:k_n_key, "
    ":k_n_nonce, :k_n_expires)), " + _FOLD_CLAIM)
_FIND = 'SELECT * FROM idempotency_keys WHERE merchant_id = :m AND livemode = :l AND "key" = :k'
