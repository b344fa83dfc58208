"""Webhook endpoints: create (secret shown once), get, list, update, delete, rotate the secret,
the delivery log; and the outbox sink that queues a delivery for every event (CONTRACT §4, §5).

Importing this module registers the sink with ``openpse.services.events``: from then on every
``record_event`` in the process also writes one pending delivery per enabled endpoint of the
event's merchant and mode that subscribes to its type, in the event's own transaction. The app
(through its routes) and the worker (through ``openpse.services.webhook_delivery``) import it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, func, insert, select

from openpse.domain.errors import InvalidRequest
from openpse.domain.ids import PREFIXES, new_id
from openpse.domain.payments import EVENT_FOR_STATUS
from openpse.services.context import Caller, Services
from openpse.services.events import changed_fields, record_event
from openpse.storage.db import Tx
from openpse.storage.repos import list_page, load_scoped, update_versioned
from openpse.storage.rows import page_result, rfc3339, row_dict
from openpse.storage.tables import webhook_attempts, webhook_deliveries, webhook_endpoints
from openpse.webhooks import keyring
from openpse.webhooks.outbox import ALL_EVENTS, cancel_pending
from openpse.webhooks.ssrf import check_url

__all__ = [
    "DISABLED_EVENT",
    "EVENT_TYPES",
    "MAX_ENDPOINTS_PER_MODE",
    "create_endpoint",
    "delete_endpoint",
    "delivery_view",
    "disable_endpoint",
    "endpoint_view",
    "get_endpoint",
    "list_deliveries",
    "list_endpoints",
    "load_endpoint",
    "rotate_secret",
    "update_endpoint",
]

DISABLED_EVENT = "webhook_endpoint.disabled"
# Every event type an endpoint may subscribe to (CONTRACT §4, plus what the code emits). A new
# event type must be added here; tests/unit/test_webhook_keyring.py checks the source for it.
EVENT_TYPES: frozenset[str] = frozenset(
    {t for t in EVENT_FOR_STATUS.values() if t is not None}
    | {
        "payment.created", "payment.requires_action", "payment.processing", "payment.authorized",
        "payment.succeeded", "payment.failed", "payment.canceled", "payment.capture_failed",
        "payment.expiring_soon", "payment.overpaid", "payment.partially_funded",
        "payment.refund_pending", "payment.refunded",
        "refund.created", "refund.succeeded", "refund.failed", "refund.canceled",
        "checkout.session.completed", "checkout.session.expired",
        DISABLED_EVENT,
    }
)
MAX_ENDPOINTS_PER_MODE = 16
MAX_ENABLED_EVENTS = 100
DISABLED_REASONS = ("requested", "endpoint_gone", "failing")
_UNSET: Any = object()


# --- views ---------------------------------------------------------------------------------------


def endpoint_view(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "object": "webhook_endpoint",
        "livemode": bool(row["livemode"]),
        "url": row["url"],
        "description": row["description"],
        "enabled_events": list(row["enabled_events"]),
        "status": row["status"],
        "disabled_reason": row["disabled_reason"],
        "created": rfc3339(row["created"]),
        "updated": rfc3339(row["updated"]),
        "version": row["version"],
    }


def attempt_view(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "attempted_at": rfc3339(row["attempted_at"]),
        "status_code": row["status_code"],
        "latency_ms": row["latency_ms"],
        "error": row["error"],
        "response_excerpt": row["response_excerpt"],
    }


def delivery_view(row: dict[str, Any], attempts: list[dict[str, Any]]) -> dict[str, Any]:
    pending = row["status"] == "pending"
    return {
        "id": row["id"],
        "object": "webhook_delivery",
        "livemode": bool(row["livemode"]),
        "event": row["event_id"],
        "endpoint": row["endpoint_id"],
        "status": row["status"],
        "attempt_count": row["attempt_count"],
        "next_attempt_at": rfc3339(row["next_attempt_at"]) if pending else None,
        "last_status_code": row["last_status_code"],
        "last_error": row["last_error"],
        "attempts": [attempt_view(a) for a in attempts],
        "created": rfc3339(row["created"]),
        "updated": rfc3339(row["updated"]),
        "version": row["version"],
    }


# --- validation ----------------------------------------------------------------------------------


def _enabled_events(types: list[str]) -> list[str]:
    if not types:
        raise InvalidRequest("enabled_events must name at least one event type, or be [\"*\"]",
                             param="enabled_events")
    if len(types) > MAX_ENABLED_EVENTS:
        raise InvalidRequest(f"enabled_events takes at most {MAX_ENABLED_EVENTS} types",
                             param="enabled_events")
    if ALL_EVENTS in types:
        if len(set(types)) != 1:
            raise InvalidRequest("\"*\" already means every event type; send [\"*\"] alone",
                                 param="enabled_events")
        return [ALL_EVENTS]
    unknown = sorted(set(types) - EVENT_TYPES)
    if unknown:
        raise InvalidRequest(
            f"unknown event type {unknown[0]!r}; known types: {', '.join(sorted(EVENT_TYPES))}",
            code="invalid_event_type", param="enabled_events")
    return sorted(set(types))


async def _vetted_url(svc: Services, url: str, *, livemode: bool) -> str:
    """The SSRF guard at creation and update; raises 400 ``invalid_webhook_url``."""
    allow_local = svc.settings.allow_local_webhooks and not svc.settings.livemode_server
    vetted = await check_url(url, livemode=livemode, allow_local=allow_local)
    return vetted.parsed.url


# --- use cases -----------------------------------------------------------------------------------


async def create_endpoint(
    svc: Services, caller: Caller, *, url: str, enabled_events: list[str],
    description: str | None = None,
) -> dict[str, Any]:
    """A new enabled endpoint; the view carries ``secret``, the only time it is shown."""
    types = _enabled_events(enabled_events)
    url = await _vetted_url(svc, url, livemode=caller.livemode)
    endpoint_id = new_id(PREFIXES["webhook_endpoint"])
    entries = keyring.new_keyring()
    now = svc.now()
    row = {
        "id": endpoint_id, "merchant_id": caller.merchant_id, "livemode": caller.livemode,
        "url": url, "description": description, "enabled_events": types, "status": "enabled",
        "disabled_reason": None, "secrets_enc": keyring.seal_keyring(svc.secrets, endpoint_id,
                                                                     entries),
        "failing_since": None, "created": now, "updated": now, "version": 1,
    }
    async with svc.db.transaction() as tx:
        count = (await tx.execute(select(func.count()).select_from(webhook_endpoints).where(
            webhook_endpoints.c.merchant_id == caller.merchant_id,
            webhook_endpoints.c.livemode == caller.livemode))).scalar_one()
        if count >= MAX_ENDPOINTS_PER_MODE:
            raise InvalidRequest(
                f"a merchant may have at most {MAX_ENDPOINTS_PER_MODE} webhook endpoints per "
                "mode; delete one first", code="webhook_endpoint_limit")
        await tx.execute(insert(webhook_endpoints).values(**row))
    return {**endpoint_view(row), "secret": entries[0]["secret"]}


async def load_endpoint(tx: Tx, caller: Caller, endpoint_id: str, *, lock: bool = False,
                        param: str = "id") -> dict[str, Any]:
    """The caller's endpoint in the caller's mode, else 404 (another merchant's id too)."""
    return await load_scoped(tx, webhook_endpoints, endpoint_id, merchant_id=caller.merchant_id,
                             livemode=caller.livemode, lock=lock, what="webhook endpoint",
                             param=param)


async def get_endpoint(svc: Services, caller: Caller, endpoint_id: str) -> dict[str, Any]:
    async with svc.db.read() as conn:
        return endpoint_view(await load_endpoint(conn, caller, endpoint_id))


async def list_endpoints(
    svc: Services, caller: Caller, *, limit: int, cursor: str | None,
    created_gte: int | None, created_lt: int | None,
) -> dict[str, Any]:
    async with svc.db.read() as conn:
        rows = await list_page(conn, webhook_endpoints, merchant_id=caller.merchant_id,
                               livemode=caller.livemode, limit=limit, cursor=cursor,
                               created_gte=created_gte, created_lt=created_lt)
    return page_result([endpoint_view(r) for r in rows], limit)


async def update_endpoint(
    svc: Services, caller: Caller, endpoint_id: str, *, url: str = _UNSET,
    enabled_events: list[str] = _UNSET, description: str | None = _UNSET,
    enabled: bool = _UNSET,
) -> dict[str, Any]:
    """Change url (vetted again), subscriptions, description, or enable/disable."""
    values: dict[str, Any] = {}
    if enabled_events is not _UNSET:
        values["enabled_events"] = _enabled_events(enabled_events)
    if url is not _UNSET:
        values["url"] = await _vetted_url(svc, url, livemode=caller.livemode)
    if description is not _UNSET:
        values["description"] = description
    now = svc.now()
    async with svc.db.transaction() as tx:
        row = await load_endpoint(tx, caller, endpoint_id, lock=True)
        if enabled is not _UNSET and enabled != (row["status"] == "enabled"):
            if not enabled:
                return endpoint_view(await _disable(tx, row, "requested", now, caller=caller,
                                                    extra=values))
            values.update(status="enabled", disabled_reason=None, failing_since=None)
        if not values:
            return endpoint_view(row)
        return endpoint_view(await update_versioned(tx, webhook_endpoints, row, values, now=now))


async def delete_endpoint(svc: Services, caller: Caller, endpoint_id: str) -> dict[str, Any]:
    """Delete the endpoint; its pending deliveries are canceled, the delivery log is kept."""
    now = svc.now()
    async with svc.db.transaction() as tx:
        row = await load_endpoint(tx, caller, endpoint_id, lock=True)
        await cancel_pending(tx, row["id"], reason="endpoint_deleted", now_s=now)
        await tx.execute(delete(webhook_endpoints).where(webhook_endpoints.c.id == row["id"]))
    return {"id": row["id"], "object": "webhook_endpoint", "livemode": bool(row["livemode"]),
            "deleted": True}


async def rotate_secret(
    svc: Services, caller: Caller, endpoint_id: str, *, expire_previous_in_s: int
) -> dict[str, Any]:
    """A new secret now; the previous ones keep signing until ``expire_previous_in_s`` passes."""
    now = svc.now()
    async with svc.db.transaction() as tx:
        row = await load_endpoint(tx, caller, endpoint_id, lock=True)
        entries = keyring.open_keyring(svc.secrets, row["id"], row["secrets_enc"])
        try:
            rotated = keyring.rotate(entries, now_s=now, expire_previous_in_s=expire_previous_in_s)
        except ValueError as exc:
            raise InvalidRequest(str(exc), param="expire_previous_in_seconds") from None
        sealed = keyring.seal_keyring(svc.secrets, row["id"], rotated)
        new = await update_versioned(tx, webhook_endpoints, row, {"secrets_enc": sealed}, now=now)
    previous = [e["expires_at"] for e in rotated[1:] if e["expires_at"] is not None]
    return {**endpoint_view(new), "secret": rotated[0]["secret"],
            "previous_secret_expires_at": rfc3339(max(previous)) if previous else None}


async def list_deliveries(
    svc: Services, caller: Caller, endpoint_id: str, *, limit: int, cursor: str | None,
    created_gte: int | None, created_lt: int | None, status: str | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    """The endpoint's deliveries, newest first, each with every attempt (oldest first)."""
    a = webhook_attempts
    equal = {"endpoint_id": endpoint_id, "status": status, "event_id": event_id}
    async with svc.db.read() as conn:
        await load_endpoint(conn, caller, endpoint_id)
        rows = await list_page(conn, webhook_deliveries, merchant_id=caller.merchant_id,
                               livemode=caller.livemode, equal=equal, limit=limit,
                               cursor=cursor, created_gte=created_gte, created_lt=created_lt)
        ids = [r["id"] for r in rows[:limit]]
        attempts: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
        if ids:
            for r in (await conn.execute(
                    select(a).where(a.c.delivery_id.in_(ids)).order_by(a.c.id))).all():
                attempts[r.delivery_id].append(row_dict(r))
    return page_result([delivery_view(r, attempts.get(r["id"], [])) for r in rows], limit)


# --- disabling (also the delivery job's hook) ----------------------------------------------------


async def _disable(
    tx: Tx, row: dict[str, Any], reason: str, now: int, *, caller: Caller | None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    if reason not in DISABLED_REASONS:
        raise ValueError(f"unknown disabled reason {reason!r}")
    values = {**(extra or {}), "status": "disabled", "disabled_reason": reason}
    new = await update_versioned(tx, webhook_endpoints, row, values, now=now)
    await cancel_pending(tx, row["id"], reason="endpoint_disabled", now_s=now)
    before, after = endpoint_view(row), endpoint_view(new)
    await record_event(tx, caller=caller, merchant_id=row["merchant_id"],
                       livemode=bool(row["livemode"]), type=DISABLED_EVENT, obj=after,
                       previous=changed_fields(before, after), now=now)
    return new


async def disable_endpoint(tx: Tx, endpoint_id: str, reason: str, now_s: int) -> None:
    """The delivery job's hook: a 410 (``endpoint_gone``) or 5 days of failures (``failing``)."""
    t = webhook_endpoints
    stmt = select(t).where(t.c.id == endpoint_id)
    if tx.dialect.name != "sqlite":
        stmt = stmt.with_for_update()
    found = (await tx.execute(stmt)).first()
    if found is None or found.status != "enabled":
        return  # deleted or already disabled meanwhile: nothing to do, no second event
    await _disable(tx, row_dict(found), reason, now_s, caller=None)


