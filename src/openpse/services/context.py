"""What every use case needs, handed in by the composition root (``openpse.bootstrap``)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from openpse.config import Settings
from openpse.crypto import Fingerprinter, SecretBox
from openpse.storage.db import Database, Tx

__all__ = ["MERCHANT_TERMS", "Caller", "ResponseHook", "Services"]

# Stores a request's final response (status, JSON body) with its idempotency key, inside the
# transaction of the request's last state change: the key is then completed by the same
# commit as the work, and no transaction of its own is needed for it afterwards. With a list of
# writes (``Direct`` writes), its write is added there instead, for the caller's next statement.
ResponseHook = Callable[[Tx, int, bytes, list[Any] | None], Awaitable[None]]


@dataclass
class Services:
    """The long-lived collaborators of the service layer."""

    db: Database
    settings: Settings
    secrets: SecretBox
    fingerprints: Fingerprinter
    connectors: dict[str, Any] = field(default_factory=dict)

    def now(self) -> int:
        return int(time.time())

    def public_url(self, caller: Caller | None, path: str) -> str:
        base = self.settings.public_url or (caller.base_url if caller else None)
        return (base or "http://127.0.0.1:8000").rstrip("/") + path

    def page_token(self, object_id: str) -> str:
        """An unguessable token for a shopper-facing page of ``object_id`` (hosted pages)."""
        return self.fingerprints.fingerprint("page:" + object_id)


# A merchant's columns an answer prices with: its fee plan and its sandbox clock.
MERCHANT_TERMS = ("pricing", "sandbox_clock_offset_s")


@dataclass(frozen=True)
class Caller:
    """Who is asking: a merchant in one mode, and the request that carries the ask."""

    merchant_id: str
    livemode: bool
    request_id: str | None = None
    idempotency_key: str | None = None
    access_key_id: str | None = None
    # What an earlier, crashed attempt of this request created.
    resume_resource_id: str | None = None
    # Where absolute URLs handed out in this request point (OPENPSE_PUBLIC_URL, else the
    # request's own scheme and host).
    base_url: str | None = None
    respond: ResponseHook | None = field(default=None, compare=False, repr=False)
    # The request's idempotency claim (anything with ``record_id``), read when needed: a claim
    # written inside the request's own first transaction has an id only from then on.
    idempotency_ref: Any = field(default=None, compare=False, repr=False)
    # The merchant's ``MERCHANT_TERMS`` as the request's key was read with them (None: not
    # read; a service reads them itself).
    merchant_terms: dict[str, Any] | None = field(default=None, compare=False, repr=False)

    def plan_resource(self, resource_id: str) -> None:
        """Tell the request's idempotency claim, before the first write, what it will create:
        a claim written inside that write records it at once (see ``resource_recorded``)."""
        plan = getattr(self.idempotency_ref, "plan_resource", None)
        if plan is not None:
            plan(resource_id)

    def resource_recorded(self, resource_id: str) -> bool:
        """Whether the claim already records ``resource_id`` (written in this transaction)."""
        records = getattr(self.idempotency_ref, "records_resource", None)
        return records is not None and bool(records(resource_id))

    async def store_answer(self, tx: Tx, status: int, view: dict[str, Any],
                           writes: list[Any] | None = None) -> None:
        """Store the request's answer (``view`` as JSON) with its Idempotency-Key in ``tx``, the
        transaction of its last state change (``respond``); nothing without a key."""
        if self.respond is not None:
            await self.respond(tx, status, orjson.dumps(view), writes)

    def key_record_id(self) -> int | None:
        """The id of this request's idempotency key row, once it exists."""
        if self.idempotency_ref is None:
            return None
        found: int | None = self.idempotency_ref.record_id
        return found

    def request_ref(self) -> dict[str, Any] | None:
        if self.request_id is None:
            return None
        return {"id": self.request_id, "idempotency_key": self.idempotency_key}
