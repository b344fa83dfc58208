"""Errors raised by the OpenPSE SDK: one flat tree, chosen by ``error.type`` then HTTP status.

The tree::

    OpenPSEError                    base: message, http_status, code, param, request_id,
    │                               type, body, headers
    ├── APIConnectionError          no HTTP answer at all (DNS, connect, timeout), after retries
    ├── AuthenticationError         401 authentication_error (signature, key, clock)
    ├── PermissionDeniedError       403 permission_error (e.g. ip_not_allowed)
    ├── InvalidRequestError         400/409 invalid_request_error: fix the request, do not retry
    │   └── NotFoundError           404: no such object for this key and mode
    ├── IdempotencyError            409/422 idempotency_error
    ├── RateLimitError              429 rate_limit_error; ``retry_after`` seconds
    ├── CardError                   402 card_error; ``payment`` is the failed payment
    ├── APIError                    5xx api_error, or an answer the SDK cannot understand
    └── SignatureVerificationError  a webhook's signature did not verify
"""

from __future__ import annotations

import datetime
import email.utils
import json
from collections.abc import Mapping
from typing import Any, Final

__all__ = [
    "APIConnectionError",
    "APIError",
    "AuthenticationError",
    "CardError",
    "IdempotencyError",
    "InvalidRequestError",
    "NotFoundError",
    "OpenPSEError",
    "PermissionDeniedError",
    "RateLimitError",
    "SignatureVerificationError",
    "error_from_response",
    "parse_retry_after_s",
]

_BODY_EXCERPT_CHARS: Final = 200
_HTTP_NOT_FOUND: Final = 404
_HTTP_SERVER_ERROR_MIN: Final = 500


class OpenPSEError(Exception):
    """Base of every SDK error. ``code`` is the API's stable error code when there is one."""

    def __init__(
        self,
        message: str,
        *,
        http_status: int | None = None,
        code: str | None = None,
        param: str | None = None,
        request_id: str | None = None,
        type: str | None = None,  # the API field name, shadowing the builtin here only
        body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.http_status = http_status
        self.code = code
        self.param = param
        self.request_id = request_id
        self.type = type
        self.body = body
        self.headers: Mapping[str, str] = headers or {}

    def __str__(self) -> str:
        suffix = f" (request {self.request_id})" if self.request_id else ""
        return f"{self.message}{suffix}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(message={self.message!r}, http_status={self.http_status}, "
            f"code={self.code!r}, param={self.param!r}, request_id={self.request_id!r})"
        )


class APIConnectionError(OpenPSEError):
    """The request got no HTTP answer; with an Idempotency-Key it is safe to send again."""


class AuthenticationError(OpenPSEError):
    """401: the signature, access key or timestamp was refused.

    On ``timestamp_out_of_window``, ``clock_skew_s`` is how far this machine's clock is ahead
    of the server's (negative: behind), from the server's own measure or its ``Date`` header.
    """

    def __init__(self, message: str, *, clock_skew_s: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.clock_skew_s = clock_skew_s


class PermissionDeniedError(OpenPSEError):
    """403: authenticated but not allowed."""


class InvalidRequestError(OpenPSEError):
    """400/409: the request cannot be acted on as sent; ``param`` names the field."""


class NotFoundError(InvalidRequestError):
    """404: the object does not exist for this key and mode."""


class IdempotencyError(OpenPSEError):
    """409/422: an Idempotency-Key was reused for another request, or is still running."""


class RateLimitError(OpenPSEError):
    """429: too many requests; wait ``retry_after`` seconds (``None`` if the server did not say)."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class CardError(OpenPSEError):
    """402: the card was declined; ``code`` is the reason, ``payment`` the failed payment."""

    def __init__(self, message: str, *, payment: dict[str, Any] | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.payment = payment


class APIError(OpenPSEError):
    """5xx, or an answer the SDK could not understand."""


class SignatureVerificationError(OpenPSEError):
    """A webhook's signature did not verify against the endpoint secret."""

    def __init__(self, message: str, *, sig_header: str | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.sig_header = sig_header


_BY_TYPE: Final[dict[str, type[OpenPSEError]]] = {
    "invalid_request_error": InvalidRequestError,
    "authentication_error": AuthenticationError,
    "permission_error": PermissionDeniedError,
    "idempotency_error": IdempotencyError,
    "rate_limit_error": RateLimitError,
    "card_error": CardError,
    "api_error": APIError,
}

_BY_STATUS: Final[dict[int, type[OpenPSEError]]] = {
    400: InvalidRequestError,
    401: AuthenticationError,
    402: CardError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: InvalidRequestError,
    422: IdempotencyError,
    429: RateLimitError,
}


def _http_date_s(value: str) -> float | None:
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return parsed.timestamp()


def parse_retry_after_s(value: str | None, *, now_s: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return float(text)
    when_s = _http_date_s(text)
    return None if when_s is None else max(0.0, when_s - now_s)


def _clock_skew_s(
    error: dict[str, Any], headers: Mapping[str, str], now_s: float
) -> tuple[float | None, str]:
    """How far the local clock is ahead of the server's, and by whose measure."""
    reported = error.get("skew_seconds")
    if isinstance(reported, int | float) and not isinstance(reported, bool):
        return float(reported), "the server's clock"
    server_s = _http_date_s(headers.get("date", ""))
    if server_s is None:
        return None, ""
    return float(round(now_s - server_s)), "the server's Date header"


def _clock_skew_hint(skew_s: float | None, source: str) -> str:
    if skew_s is None:
        return " (hint: check that this machine's clock is synchronised, e.g. with NTP)"
    direction = "ahead of" if skew_s >= 0 else "behind"
    return (
        f" (hint: the local clock is {abs(int(skew_s))} seconds {direction} {source}; "
        "synchronise it, e.g. with NTP)"
    )


def _error_class(error_type: str | None, status: int) -> type[OpenPSEError]:
    cls = _BY_TYPE.get(error_type or "")
    if cls is InvalidRequestError and status == _HTTP_NOT_FOUND:
        return NotFoundError
    if cls is not None:
        return cls
    if status >= _HTTP_SERVER_ERROR_MIN:
        return APIError
    return _BY_STATUS.get(status, APIError)


def _decode_error(content: bytes) -> tuple[Any, dict[str, Any]]:
    """The parsed body (or its text) and its ``error`` object (empty if there is none)."""
    try:
        body = json.loads(content)
    except ValueError:
        return content.decode("utf-8", "replace"), {}
    error = body.get("error") if isinstance(body, dict) else None
    return body, error if isinstance(error, dict) else {}


def _message(error: dict[str, Any], body: Any, status: int) -> str:
    message = error.get("message")
    if isinstance(message, str) and message:
        return message
    excerpt = body if isinstance(body, str) else json.dumps(body)
    return f"the server answered HTTP {status}: {excerpt[:_BODY_EXCERPT_CHARS]!r}"


def error_from_response(
    status: int, headers: Mapping[str, str], content: bytes, *, now_s: float
) -> OpenPSEError:
    """The error for a non-2xx answer. ``headers`` must look up names case-insensitively
    (``httpx.Headers`` does); ``now_s`` is the local Unix time, for the clock-skew hint."""
    body, error = _decode_error(content)
    error_type = error.get("type") if isinstance(error.get("type"), str) else None
    code = error.get("code")
    message = _message(error, body, status)
    cls = _error_class(error_type, status)
    extra: dict[str, Any] = {}
    if code == "timestamp_out_of_window":
        skew_s, source = _clock_skew_s(error, headers, now_s)
        message += _clock_skew_hint(skew_s, source)
        if cls is AuthenticationError:
            extra["clock_skew_s"] = skew_s
    if cls is RateLimitError:
        extra["retry_after"] = parse_retry_after_s(headers.get("retry-after"), now_s=now_s)
    elif cls is CardError:
        payment = error.get("payment")
        extra["payment"] = payment if isinstance(payment, dict) else None
    return cls(
        message,
        http_status=status,
        code=code if isinstance(code, str) else None,
        param=error.get("param") if isinstance(error.get("param"), str) else None,
        request_id=error.get("request_id") or headers.get("x-request-id"),
        type=error_type,
        body=body,
        headers=headers,
        **extra,
    )
