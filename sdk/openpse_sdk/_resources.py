"""Resource services: each method knows only an HTTP method and a path.

Every service is generic over what ``request`` returns (``R``) and over what pagination returns
(``P``), so one definition serves both clients: ``OpenPSE`` binds them to a function returning
a ``dict`` and to an ``Iterator`` of items, ``AsyncOpenPSE`` to a coroutine function
(``await client.payments.create(...)``) and to an ``AsyncIterator`` (``async for``). Keyword
arguments are the request's JSON body (POST, PATCH) or its query parameters (GET).

Every list has a ``list_all`` twin that follows ``next_cursor`` lazily, page by page.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar
from urllib.parse import quote

__all__ = [
    "AccessKeysService",
    "AccountService",
    "BalanceService",
    "CheckoutSessionsService",
    "EventsService",
    "PaymentsService",
    "RefundsService",
    "RequestLogsService",
    "TestHelpersService",
    "WebhookEndpointsService",
]

R = TypeVar("R")
P = TypeVar("P")

Paginate = Callable[[str, Mapping[str, Any] | None], P]


def _segment(object_id: str) -> str:
    """An id as one path segment: percent-encoded, so ``/`` or ``?`` cannot change the path."""
    if not isinstance(object_id, str) or not object_id:
        raise ValueError(f"an object id must be a non-empty string; got {object_id!r}")
    return quote(object_id, safe="")


def _without_none(params: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in params.items() if value is not None}


class _Service(Generic[R, P]):
    def __init__(self, request: Callable[..., R], paginate: Paginate[P]) -> None:
        self._request = request
        self._paginate = paginate

    def _get(self, path: str, params: dict[str, Any] | None = None) -> R:
        return self._request("GET", path, params=params or None)

    def _post(self, path: str, body: dict[str, Any], idempotency_key: str | None) -> R:
        return self._request("POST", path, json=body, idempotency_key=idempotency_key)

    def _all(self, path: str, params: dict[str, Any]) -> P:
        return self._paginate(path, params or None)


class PaymentsService(_Service[R, P]):
    """``/v1/payments``."""

    def create(self, *, idempotency_key: str | None = None, **params: Any) -> R:
        return self._post("/v1/payments", params, idempotency_key)

    def retrieve(self, payment_id: str) -> R:
        return self._get(f"/v1/payments/{_segment(payment_id)}")

    def list(self, **params: Any) -> R:
        return self._get("/v1/payments", params)

    def list_all(self, **params: Any) -> P:
        return self._all("/v1/payments", params)

    def confirm(self, payment_id: str, *, idempotency_key: str | None = None, **params: Any) -> R:
        return self._post(f"/v1/payments/{_segment(payment_id)}/confirm", params, idempotency_key)

    def capture(self, payment_id: str, *, idempotency_key: str | None = None, **params: Any) -> R:
        return self._post(f"/v1/payments/{_segment(payment_id)}/capture", params, idempotency_key)

    def cancel(self, payment_id: str, *, idempotency_key: str | None = None, **params: Any) -> R:
        return self._post(f"/v1/payments/{_segment(payment_id)}/cancel", params, idempotency_key)


class RefundsService(_Service[R, P]):
    """``/v1/refunds``."""

    def create(self, *, idempotency_key: str | None = None, **params: Any) -> R:
        return self._post("/v1/refunds", params, idempotency_key)

    def retrieve(self, refund_id: str) -> R:
        return self._get(f"/v1/refunds/{_segment(refund_id)}")

    def list(self, **params: Any) -> R:
        return self._get("/v1/refunds", params)

    def list_all(self, **params: Any) -> P:
        return self._all("/v1/refunds", params)


class CheckoutSessionsService(_Service[R, P]):
    """``/v1/checkout/sessions``."""

    def create(self, *, idempotency_key: str | None = None, **params: Any) -> R:
        return self._post("/v1/checkout/sessions", params, idempotency_key)

    def retrieve(self, session_id: str) -> R:
        return self._get(f"/v1/checkout/sessions/{_segment(session_id)}")

    def list(self, **params: Any) -> R:
        return self._get("/v1/checkout/sessions", params)

    def list_all(self, **params: Any) -> P:
        return self._all("/v1/checkout/sessions", params)

    def expire(self, session_id: str, *, idempotency_key: str | None = None) -> R:
        path = f"/v1/checkout/sessions/{_segment(session_id)}/expire"
        return self._post(path, {}, idempotency_key)


class EventsService(_Service[R, P]):
    """``/v1/events``: filters ``type``, ``object_id``, ``created_gte``, ``created_lt``."""

    def list(self, **params: Any) -> R:
        return self._get("/v1/events", params)

    def list_all(self, **params: Any) -> P:
        return self._all("/v1/events", params)

    def retrieve(self, event_id: str) -> R:
        return self._get(f"/v1/events/{_segment(event_id)}")

    def redeliver(
        self, event_id: str, *, endpoint: str | None = None, idempotency_key: str | None = None
    ) -> R:
        body = _without_none({"endpoint": endpoint})
        return self._post(f"/v1/events/{_segment(event_id)}/redeliver", body, idempotency_key)


class WebhookEndpointsService(_Service[R, P]):
    """``/v1/webhook_endpoints``."""

    def create(self, *, idempotency_key: str | None = None, **params: Any) -> R:
        return self._post("/v1/webhook_endpoints", params, idempotency_key)

    def retrieve(self, endpoint_id: str) -> R:
        return self._get(f"/v1/webhook_endpoints/{_segment(endpoint_id)}")

    def list(self, **params: Any) -> R:
        return self._get("/v1/webhook_endpoints", params)

    def list_all(self, **params: Any) -> P:
        return self._all("/v1/webhook_endpoints", params)

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

    def list_all_deliveries(self, endpoint_id: str, **params: Any) -> P:
        return self._all(f"/v1/webhook_endpoints/{_segment(endpoint_id)}/deliveries", params)


class BalanceService(_Service[R, P]):
    """``/v1/balance``."""

    def retrieve(self) -> R:
        return self._get("/v1/balance")


class AccountService(_Service[R, P]):
    """``/v1/account`` (the calling merchant) and ``/v1/whoami`` (the calling key)."""

    def retrieve(self) -> R:
        return self._get("/v1/account")

    def whoami(self) -> R:
        """The key, its mode, the client address the server sees and the server's time."""
        return self._get("/v1/whoami")


class AccessKeysService(_Service[R, P]):
    """``/v1/access_keys``: list, create, update, rotate with an overlap, revoke."""

    def list(self, **params: Any) -> R:
        return self._get("/v1/access_keys", params)

    def list_all(self, **params: Any) -> P:
        return self._all("/v1/access_keys", params)

    def create(self, *, idempotency_key: str | None = None, **params: Any) -> R:
        return self._post("/v1/access_keys", params, idempotency_key)

    def retrieve(self, key_id: str) -> R:
        return self._get(f"/v1/access_keys/{_segment(key_id)}")

    def update(self, key_id: str, *, idempotency_key: str | None = None, **params: Any) -> R:
        """``ip_allowlist`` (CIDRs; ``[]`` allows every address) and ``description``."""
        return self._post(f"/v1/access_keys/{_segment(key_id)}", params, idempotency_key)

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


class RequestLogsService(_Service[R, P]):
    """``/v1/request_logs``: the merchant's redacted request log, newest first (``status``)."""

    def list(self, **params: Any) -> R:
        return self._get("/v1/request_logs", params)

    def list_all(self, **params: Any) -> P:
        return self._all("/v1/request_logs", params)


class TestHelpersService(_Service[R, P]):
    """``/v1/test_helpers``: do in the sandbox what a shopper, a bank or time would do.

    Every helper answers 404 with a live key.
    """

    __test__ = False  # not a pytest test class, whatever its name says

    def _payment(self, payment_id: str, action: str, body: dict[str, Any],
                 idempotency_key: str | None) -> R:
        path = f"/v1/test_helpers/payments/{_segment(payment_id)}/{action}"
        return self._post(path, body, idempotency_key)

    def complete_3ds(
        self, payment_id: str, *, outcome: str = "succeed", idempotency_key: str | None = None
    ) -> R:
        """Finish a 3-D Secure challenge as the shopper would: ``succeed`` or ``fail``."""
        return self._payment(payment_id, "complete_3ds", {"outcome": outcome}, idempotency_key)

    def pay_voucher(
        self, payment_id: str, *, store: str | None = None, idempotency_key: str | None = None
    ) -> R:
        """The shopper pays a konbini / Pay-easy / boleto voucher (``store``: which chain)."""
        body = _without_none({"store": store})
        return self._payment(payment_id, "pay_voucher", body, idempotency_key)

    def fund(self, payment_id: str, *, amount: int, idempotency_key: str | None = None) -> R:
        """A bank transfer of ``amount`` arrives on the payment's virtual account."""
        return self._payment(payment_id, "fund", {"amount": amount}, idempotency_key)

    def settle(self, payment_id: str, *, idempotency_key: str | None = None) -> R:
        """The shopper's bank confirms a SEPA debit."""
        return self._payment(payment_id, "settle", {}, idempotency_key)

    def fail(
        self,
        payment_id: str,
        *,
        failure_code: str | None = None,
        idempotency_key: str | None = None,
    ) -> R:
        """The shopper's bank returns a SEPA debit (late failure)."""
        body = _without_none({"failure_code": failure_code})
        return self._payment(payment_id, "fail", body, idempotency_key)

    def complete_refund(
        self, refund_id: str, *, outcome: str = "succeed", idempotency_key: str | None = None
    ) -> R:
        """Pay out (``succeed``) or bounce (``fail``) a pending refund by bank transfer."""
        path = f"/v1/test_helpers/refunds/{_segment(refund_id)}/complete"
        return self._post(path, {"outcome": outcome}, idempotency_key)

    def retrieve_clock(self) -> R:
        """This merchant's sandbox clock."""
        return self._get("/v1/test_helpers/clock")

    def advance_clock(self, *, seconds: int, idempotency_key: str | None = None) -> R:
        """Move this merchant's sandbox time forward, so expiries and windows happen now."""
        return self._post("/v1/test_helpers/clock/advance", {"seconds": seconds}, idempotency_key)
