"""Resource services: each method knows only an HTTP method and a path.

Every service is generic over what ``request`` returns, so one definition serves both clients:
``OpenPSE`` binds them to a function returning a ``dict``, ``AsyncOpenPSE`` to a coroutine
function (``await client.payments.create(...)``). Keyword arguments are the request's JSON
body (POST, PATCH) or its query parameters (GET).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar
from urllib.parse import quote

__all__ = [
    "AccessKeysService",
    "BalanceService",
    "CheckoutSessionsService",
    "EventsService",
    "PaymentsService",
    "RefundsService",
    "WebhookEndpointsService",
]

R = TypeVar("R")


def _segment(object_id: str) -> str:
    """An id as one path segment: percent-encoded, so ``/`` or ``?`` cannot change the path."""
    if not isinstance(object_id, str) or not object_id:
        raise ValueError(f"an object id must be a non-empty string; got {object_id!r}")
    return quote(object_id, safe="")


def _without_none(params: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in params.items() if value is not None}


class _Service(Generic[R]):
    def __init__(self, request: Callable[..., R]) -> None:
        self._request = request

    def _get(self, path: str, params: dict[str, Any] | None = None) -> R:
        return self._request("GET", path, params=params or None)

    def _post(self, path: str, body: dict[str, Any], idempotency_key: str | None) -> R:
        return self._request("POST", path, json=body, idempotency_key=idempotency_key)


class PaymentsService(_Service[R]):
    """``/v1/payments``."""

    def create(self, *, idempotency_key: str | None = None, **params: Any) -> R:
        return self._post("/v1/payments", params, idempotency_key)

    def retrieve(self, payment_id: str) -> R:
        return self._get(f"/v1/payments/{_segment(payment_id)}")

    def list(self, **params: Any) -> R:
        return self._get("/v1/payments", params)

    def confirm(self, payment_id: str, *, idempotency_key: str | None = None, **params: Any) -> R:
        return self._post(f"/v1/payments/{_segment(payment_id)}/confirm", params, idempotency_key)

    def capture(self, payment_id: str, *, idempotency_key: str | None = None, **params: Any) -> R:
        return self._post(f"/v1/payments/{_segment(payment_id)}/capture", params, idempotency_key)

    def cancel(self, payment_id: str, *, idempotency_key: str | None = None, **params: Any) -> R:
        return self._post(f"/v1/payments/{_segment(payment_id)}/cancel", params, idempotency_key)


class RefundsService(_Service[R]):
    """``/v1/refunds``."""

    def create(self, *, idempotency_key: str | None = None, **params: Any) -> R:
        return self._post("/v1/refunds", params, idempotency_key)

    def retrieve(self, refund_id: str) -> R:
        return self._get(f"/v1/refunds/{_segment(refund_id)}")

    def list(self, **params: Any) -> R:
        return self._get("/v1/refunds", params)


class CheckoutSessionsService(_Service[R]):
    """``/v1/checkout/sessions``."""

    def create(self, *, idempotency_key: str | None = None, **params: Any) -> R:
        return self._post("/v1/checkout/sessions", params, idempotency_key)

    def retrieve(self, session_id: str) -> R:
        return self._get(f"/v1/checkout/sessions/{_segment(session_id)}")

    def list(self, **params: Any) -> R:
        return self._get("/v1/checkout/sessions", params)

    def expire(self, session_id: str, *, idempotency_key: str | None = None) -> R:
        path = f"/v1/checkout/sessions/{_segment(session_id)}/expire"
        return self._post(path, {}, idempotency_key)


class EventsService(_Service[R]):
    """``/v1/events``."""

    def list(self, **params: Any) -> R:
        return self._get("/v1/events", params)

    def retrieve(self, event_id: str) -> R:
        return self._get(f"/v1/events/{_segment(event_id)}")

    def redeliver(
        self, event_id: str, *, endpoint: str | None = None, idempotency_key: str | None = None
    ) -> R:
        body = _without_none({"endpoint": endpoint})
        return self._post(f"/v1/events/{_segment(event_id)}/redeliver", body, idempotency_key)


class WebhookEndpointsService(_Service[R]):
    """``/v1/webhook_endpoints``."""

    def create(self, *, idempotency_key: str | None = None, **params: Any) -> R:
        return self._post("/v1/webhook_endpoints", params, idempotency_key)

    def retrieve(self, endpoint_id: str) -> R:
        return self._get(f"/v1/webhook_endpoints/{_segment(endpoint_id)}")

    def list(self, **params: Any) -> R:
        return self._get("/v1/webhook_endpoints", params)

    def update(self, endpoint_id: str, **params: Any) -> R:
        return self._request("PATCH", f"/v1/webhook_endpoints/{_segment(endpoint_id)}", json=params)

    def delete(self, endpoint_id: str) -> R:
        return self._request("DELETE", f"/v1/webhook_endpoints/{_segment(endpoint_id)}")

    def rotate_secret(
        self,
        endpoint_id: str,
        *,
        expire_previous_in_seconds: int | None = None,
        idempotency_key: str | None = None,
    ) -> R:
        path = f"/v1/webhook_endpoints/{_segment(endpoint_id)}/rotate_secret"
        body = _without_none({"expire_previous_in_seconds": expire_previous_in_seconds})
        return self._post(path, body, idempotency_key)

    def list_deliveries(self, endpoint_id: str, **params: Any) -> R:
        return self._get(f"/v1/webhook_endpoints/{_segment(endpoint_id)}/deliveries", params)


class BalanceService(_Service[R]):
    """``/v1/balance``."""

    def retrieve(self) -> R:
        return self._get("/v1/balance")


class AccessKeysService(_Service[R]):
    """``/v1/access_keys``: list, create, rotate with an overlap, revoke."""

    def list(self, **params: Any) -> R:
        return self._get("/v1/access_keys", params)

    def create(self, *, idempotency_key: str | None = None, **params: Any) -> R:
        return self._post("/v1/access_keys", params, idempotency_key)

    def rotate(
        self,
        key_id: str,
        *,
        overlap_seconds: int | None = None,
        idempotency_key: str | None = None,
    ) -> R:
        body = _without_none({"overlap_seconds": overlap_seconds})
        return self._post(f"/v1/access_keys/{_segment(key_id)}/rotate", body, idempotency_key)

    def revoke(self, key_id: str, *, idempotency_key: str | None = None) -> R:
        return self._post(f"/v1/access_keys/{_segment(key_id)}/revoke", {}, idempotency_key)
