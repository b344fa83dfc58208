"""Domain errors: every failure the business rules can raise, each with a stable ``code``.

The tree::

    DomainError                      base; carries code, message, param
    ├── InvalidRequest               the caller sent something we cannot act on (400)
    │   └── NotFound                 the object does not exist for this caller (404)
    ├── AuthenticationFailed         signature, key or timestamp problem (401)
    ├── PermissionDenied             authenticated but not allowed (403)
    ├── Conflict                     the object's state forbids the operation (409)
    ├── IdempotencyFailure           an idempotency key was misused (409/422)
    ├── RateLimited                  too many requests (429)
    ├── CardDeclined                 the acquirer or risk refused a card (402)
    └── AcquirerUnavailable          a connector failed in a way that may be retried (502)

Only ``openpse.api.errors`` maps these to HTTP; nothing else knows about status codes.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AcquirerUnavailable",
    "AuthenticationFailed",
    "CardDeclined",
    "Conflict",
    "DomainError",
    "IdempotencyFailure",
    "InvalidRequest",
    "NotFound",
    "PermissionDenied",
    "RateLimited",
]


class DomainError(Exception):
    """A rule was broken. ``code`` is stable and documented; ``message`` says how to fix it."""

    code: str = "error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.param = param
        self.extra: dict[str, Any] = extra or {}

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}(code={self.code!r}, param={self.param!r}, message={self.message!r})"


class InvalidRequest(DomainError):
    code = "parameter_invalid"


class NotFound(InvalidRequest):
    code = "resource_missing"


class AuthenticationFailed(DomainError):
    code = "authentication_failed"


class PermissionDenied(DomainError):
    code = "permission_denied"


class Conflict(DomainError):
    code = "invalid_state"


class IdempotencyFailure(DomainError):
    code = "idempotency_error"


class RateLimited(DomainError):
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: int, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after_s = retry_after_s


class CardDeclined(DomainError):
    code = "card_declined"


class AcquirerUnavailable(DomainError):
    code = "acquirer_unavailable"
