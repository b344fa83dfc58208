"""The OpenPSE clients: ``OpenPSE`` (sync) and ``AsyncOpenPSE`` (async), built on httpx.

One requestor does everything a call needs, in one place:

- signs every attempt (contract §2) over the path and query exactly as they go on the wire and
  the exact body bytes sent, with a fresh timestamp and nonce per attempt;
- gives every POST an ``Idempotency-Key`` (uuid4) unless the caller passed one, and reuses it
  on every retry so the server runs the work once;
- retries, at most ``max_retries`` times, on connection failures, 429, 5xx and
  409 ``idempotency_request_in_progress``, with jittered exponential backoff that honours
  ``Retry-After`` up to :data:`MAX_RETRY_AFTER_S`;
- maps every non-2xx answer to the :mod:`openpse_sdk.errors` tree.
"""

from __future__ import annotations

import asyncio
import datetime
import json as _json
import random
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Self
from urllib.parse import quote

import httpx

from openpse_sdk._resources import (
    AccessKeysService,
    AccountService,
    BalanceService,
    CheckoutSessionsService,
    EventsService,
    PaymentsService,
    RefundsService,
    RequestLogsService,
    TestHelpersService,
    WebhookEndpointsService,
)
from openpse_sdk._signing import sign, string_to_sign
from openpse_sdk._version import __version__
from openpse_sdk.errors import (
    APIConnectionError,
    APIError,
    error_from_response,
    parse_retry_after_s,
)

__all__ = [
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_TIMEOUT_S",
    "MAX_RETRIES_LIMIT",
    "MAX_RETRY_AFTER_S",
    "AsyncOpenPSE",
    "JSONObject",
    "OpenPSE",
    "ResponseMeta",
    "encode_query",
]

JSONObject = dict[str, Any]
_Awaitable = Coroutine[Any, Any, JSONObject]  # what AsyncOpenPSE's services return
_Items = Iterator[JSONObject]  # what OpenPSE's list_all methods return
_AsyncItems = AsyncIterator[JSONObject]  # and AsyncOpenPSE's

DEFAULT_TIMEOUT_S: Final = 30.0
DEFAULT_MAX_RETRIES: Final = 2
MAX_RETRIES_LIMIT: Final = 10
INITIAL_BACKOFF_S: Final = 0.5
MAX_BACKOFF_S: Final = 8.0
MAX_RETRY_AFTER_S: Final = 60.0
NONCE_BYTES: Final = 24  # token_urlsafe(24) is 32 characters of [A-Za-z0-9_-]
USER_AGENT: Final = f"openpse-sdk-python/{__version__}"
JSON_CONTENT_TYPE: Final = "application/json; charset=utf-8"

_HTTP_NO_CONTENT: Final = 204
_HTTP_CONFLICT: Final = 409
_HTTP_TOO_MANY_REQUESTS: Final = 429
_HTTP_SERVER_ERROR_MIN: Final = 500
_RETRYABLE_TRANSPORT_ERRORS: Final = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
)

Outcome = httpx.Response | httpx.TransportError


def _unix_now_s() -> int:
    return int(time.time())


def _new_nonce() -> str:
    return secrets.token_urlsafe(NONCE_BYTES)


def _sleep_s(seconds: float) -> None:
    time.sleep(seconds)


async def _async_sleep_s(seconds: float) -> None:
    await asyncio.sleep(seconds)


@dataclass(frozen=True)
class ResponseMeta:
    """What the last answer said beyond its body: status and headers."""

    status_code: int
    headers: Mapping[str, str]

    @property
    def request_id(self) -> str | None:
        return self.headers.get("x-request-id")

    @property
    def idempotent_replayed(self) -> bool:
        return self.headers.get("idempotent-replayed", "").lower() == "true"


@dataclass(frozen=True)
class _Call:
    """One logical request; every attempt sends these same bytes, freshly signed."""

    method: str
    url: str
    body: bytes | None
    headers: httpx.Headers


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            raise ValueError("datetime query values must be timezone-aware")
        return value.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, str | int):
        return str(value)
    raise TypeError(f"unsupported query value {value!r}: use str, int, bool or datetime")


def encode_query(params: Mapping[str, Any] | None) -> str:
    """RFC 3986 query text: ``None`` values dropped, lists repeated, every reserved char %XX."""
    pairs: list[str] = []
    for key, value in (params or {}).items():
        values = value if isinstance(value, list | tuple) else [value]
        pairs.extend(
            f"{quote(key, safe='')}={quote(_query_value(item), safe='')}"
            for item in values
            if item is not None
        )
    return "&".join(pairs)


def _encode_body(body: Any) -> bytes:
    """The exact bytes sent and hashed: compact, UTF-8, no NaN."""
    return _json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(
        "utf-8"
    )


def _error_code(response: httpx.Response) -> str | None:
    try:
        code = response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None
    return code if isinstance(code, str) else None


def _is_retryable(outcome: Outcome) -> bool:
    if isinstance(outcome, httpx.TransportError):
        return isinstance(outcome, _RETRYABLE_TRANSPORT_ERRORS)
    status = outcome.status_code
    if status == _HTTP_TOO_MANY_REQUESTS or status >= _HTTP_SERVER_ERROR_MIN:
        return True
    return status == _HTTP_CONFLICT and _error_code(outcome) == "idempotency_request_in_progress"


class _Requestor:
    """State and pure steps shared by both clients; the clients only add the I/O."""

    def __init__(
        self,
        base_url: str,
        access_key: str,
        secret: str,
        *,
        timeout_s: float,
        max_retries: int,
    ) -> None:
        if not access_key or not secret:
            raise ValueError("access_key and secret are both required")
        if not 0 <= max_retries <= MAX_RETRIES_LIMIT:
            raise ValueError(f"max_retries must be 0-{MAX_RETRIES_LIMIT}; got {max_retries}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive; got {timeout_s}")
        self.base_url = base_url
        self.access_key = access_key
        self._secret = secret
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.last_response: ResponseMeta | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r}, access_key={self.access_key!r})"

    def _prepare(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None,
        json: Any,
        idempotency_key: str | None,
        headers: Mapping[str, str] | None,
    ) -> _Call:
        method = method.upper()
        body = None if json is None else _encode_body(json)
        call_headers = httpx.Headers({"Accept": "application/json", "User-Agent": USER_AGENT})
        if body is not None:
            call_headers["Content-Type"] = JSON_CONTENT_TYPE
        call_headers.update(headers or {})
        if idempotency_key is not None:
            call_headers["Idempotency-Key"] = idempotency_key
        elif method == "POST" and "idempotency-key" not in call_headers:
            call_headers["Idempotency-Key"] = str(uuid.uuid4())
        query = encode_query(params)
        return _Call(method, f"{path}?{query}" if query else path, body, call_headers)

    def _signed(self, client: httpx.Client | httpx.AsyncClient, call: _Call) -> httpx.Request:
        """A fresh request for one attempt, signed over what httpx will put on the wire."""
        request = client.build_request(
            call.method, call.url, content=call.body, headers=call.headers
        )
        path, _, query = request.url.raw_path.decode("ascii").partition("?")
        timestamp, nonce = str(_unix_now_s()), _new_nonce()
        sts = string_to_sign(request.method, path, query, timestamp, nonce, request.content)
        request.headers["X-PSE-Access-Key"] = self.access_key
        request.headers["X-PSE-Timestamp"] = timestamp
        request.headers["X-PSE-Nonce"] = nonce
        request.headers["X-PSE-Signature"] = sign(self._secret, sts)
        return request

    def _retry_delay_s(self, attempt: int, outcome: Outcome) -> float | None:
        """Seconds to wait before the next attempt, or ``None`` to stop after this one."""
        if attempt >= self.max_retries or not _is_retryable(outcome):
            return None
        if isinstance(outcome, httpx.Response):
            header = outcome.headers.get("retry-after")
            retry_after_s = parse_retry_after_s(header, now_s=time.time())
            if retry_after_s is not None:
                return min(retry_after_s, MAX_RETRY_AFTER_S)
        backoff_s = min(MAX_BACKOFF_S, INITIAL_BACKOFF_S * (1 << attempt))
        return backoff_s * (0.5 + random.random() / 2)  # jitter spreads out retry storms

    def _finish(self, outcome: Outcome, attempts: int) -> JSONObject:
        """The parsed body of a 2xx answer; every other outcome raises."""
        if isinstance(outcome, httpx.TransportError):
            raise APIConnectionError(
                f"could not get an answer from {self.base_url} after {attempts} attempt(s): "
                f"{type(outcome).__name__}: {outcome}"
            ) from outcome
        self.last_response = ResponseMeta(outcome.status_code, outcome.headers)
        if not outcome.is_success:
            raise error_from_response(
                outcome.status_code, outcome.headers, outcome.content, now_s=time.time()
            )
        return _parse_success(outcome)


def _parse_success(response: httpx.Response) -> JSONObject:
    if response.status_code == _HTTP_NO_CONTENT or not response.content:
        return {}
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise APIError(
            f"the server answered HTTP {response.status_code} without a JSON object",
            http_status=response.status_code,
            request_id=response.headers.get("x-request-id"),
            headers=response.headers,
        )
    return body


def _next_cursor(page: JSONObject, seen: set[str]) -> str | None:
    """The cursor of the next page, or ``None`` after the last; refuses a cursor loop."""
    if page.get("object") != "list" or not isinstance(page.get("data"), list):
        raise APIError("expected a list object with a 'data' array", body=page)
    cursor = page.get("next_cursor")
    if not page.get("has_more") or not cursor:
        return None
    if cursor in seen:
        raise APIError(f"pagination cursor {cursor!r} repeated; stopping", body=page)
    seen.add(cursor)
    return str(cursor)


class OpenPSE(_Requestor):
    """Synchronous client. Thread-safe except :attr:`last_response`, which is per client."""

    def __init__(
        self,
        base_url: str,
        access_key: str,
        secret: str,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_retries: int = DEFAULT_MAX_RETRIES,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, access_key, secret, timeout_s=timeout_s, max_retries=max_retries)
        self._http = httpx.Client(
            base_url=base_url, timeout=timeout_s, transport=transport, follow_redirects=False
        )
        rq, pages = self.request, self.list_all
        self.payments = PaymentsService[JSONObject, _Items](rq, pages)
        self.refunds = RefundsService[JSONObject, _Items](rq, pages)
        self.checkout_sessions = CheckoutSessionsService[JSONObject, _Items](rq, pages)
        self.events = EventsService[JSONObject, _Items](rq, pages)
        self.webhook_endpoints = WebhookEndpointsService[JSONObject, _Items](rq, pages)
        self.balance = BalanceService[JSONObject, _Items](rq, pages)
        self.account = AccountService[JSONObject, _Items](rq, pages)
        self.access_keys = AccessKeysService[JSONObject, _Items](rq, pages)
        self.request_logs = RequestLogsService[JSONObject, _Items](rq, pages)
        self.test_helpers = TestHelpersService[JSONObject, _Items](rq, pages)

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        idempotency_key: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> JSONObject:
        """Send one API call (with retries); return the JSON object or raise an SDK error."""
        call = self._prepare(method, path, params, json, idempotency_key, headers)
        for attempt in range(self.max_retries + 1):
            outcome = self._send(call)
            delay_s = self._retry_delay_s(attempt, outcome)
            if delay_s is None:
                return self._finish(outcome, attempt + 1)
            _sleep_s(delay_s)
        raise AssertionError("unreachable: the last attempt always returns or raises")

    def _send(self, call: _Call) -> Outcome:
        try:
            return self._http.send(self._signed(self._http, call))
        except httpx.TransportError as exc:
            return exc

    def list_all(self, path: str, params: Mapping[str, Any] | None = None) -> Iterator[JSONObject]:
        """Every item of a list endpoint, following ``next_cursor`` page by page."""
        query = dict(params or {})
        seen: set[str] = set()
        while True:  # ends at the last page; _next_cursor refuses a repeated cursor
            page = self.request("GET", path, params=query)
            cursor = _next_cursor(page, seen)
            yield from page["data"]
            if cursor is None:
                return
            query["cursor"] = cursor

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncOpenPSE(_Requestor):
    """Asynchronous client: the same surface as :class:`OpenPSE`, with ``await``."""

    def __init__(
        self,
        base_url: str,
        access_key: str,
        secret: str,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_retries: int = DEFAULT_MAX_RETRIES,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, access_key, secret, timeout_s=timeout_s, max_retries=max_retries)
        self._http = httpx.AsyncClient(
            base_url=base_url, timeout=timeout_s, transport=transport, follow_redirects=False
        )
        rq, pages = self.request, self.list_all
        self.payments = PaymentsService[_Awaitable, _AsyncItems](rq, pages)
        self.refunds = RefundsService[_Awaitable, _AsyncItems](rq, pages)
        self.checkout_sessions = CheckoutSessionsService[_Awaitable, _AsyncItems](rq, pages)
        self.events = EventsService[_Awaitable, _AsyncItems](rq, pages)
        self.webhook_endpoints = WebhookEndpointsService[_Awaitable, _AsyncItems](rq, pages)
        self.balance = BalanceService[_Awaitable, _AsyncItems](rq, pages)
        self.account = AccountService[_Awaitable, _AsyncItems](rq, pages)
        self.access_keys = AccessKeysService[_Awaitable, _AsyncItems](rq, pages)
        self.request_logs = RequestLogsService[_Awaitable, _AsyncItems](rq, pages)
        self.test_helpers = TestHelpersService[_Awaitable, _AsyncItems](rq, pages)

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        idempotency_key: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> JSONObject:
        """Send one API call (with retries); return the JSON object or raise an SDK error."""
        call = self._prepare(method, path, params, json, idempotency_key, headers)
        for attempt in range(self.max_retries + 1):
            outcome = await self._send(call)
            delay_s = self._retry_delay_s(attempt, outcome)
            if delay_s is None:
                return self._finish(outcome, attempt + 1)
            await _async_sleep_s(delay_s)
        raise AssertionError("unreachable: the last attempt always returns or raises")

    async def _send(self, call: _Call) -> Outcome:
        try:
            return await self._http.send(self._signed(self._http, call))
        except httpx.TransportError as exc:
            return exc

    async def list_all(
        self, path: str, params: Mapping[str, Any] | None = None
    ) -> AsyncIterator[JSONObject]:
        """Every item of a list endpoint, following ``next_cursor`` page by page."""
        query = dict(params or {})
        seen: set[str] = set()
        while True:  # ends at the last page; _next_cursor refuses a repeated cursor
            page = await self.request("GET", path, params=query)
            cursor = _next_cursor(page, seen)
            for item in page["data"]:
                yield item
            if cursor is None:
                return
            query["cursor"] = cursor

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
