"""OpenPSE merchant SDK: signed requests, idempotent retries and one error tree.

Usage::

    >>> from openpse_sdk import OpenPSE
    >>> with OpenPSE("http://127.0.0.1:8000", "ak_test_...", "sk_test_...") as client:
    ...     payment = client.payments.create(amount=2000, currency="JPY", ...)
    ...     for refund in client.refunds.list_all(payment=payment["id"]):  # every page, lazily
    ...         ...

Webhooks: ``openpse_sdk.webhooks.verify(body, headers, secret)`` (see :mod:`openpse_sdk.webhooks`).
"""

from openpse_sdk import webhooks
from openpse_sdk._version import __version__
from openpse_sdk.client import (
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT_S,
    AsyncOpenPSE,
    JSONObject,
    OpenPSE,
    ResponseMeta,
)
from openpse_sdk.errors import (
    APIConnectionError,
    APIError,
    AuthenticationError,
    CardError,
    IdempotencyError,
    InvalidRequestError,
    NotFoundError,
    OpenPSEError,
    PermissionDeniedError,
    RateLimitError,
    SignatureVerificationError,
)

__all__ = [
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_TIMEOUT_S",
    "APIConnectionError",
    "APIError",
    "AsyncOpenPSE",
    "AuthenticationError",
    "CardError",
    "IdempotencyError",
    "InvalidRequestError",
    "JSONObject",
    "NotFoundError",
    "OpenPSE",
    "OpenPSEError",
    "PermissionDeniedError",
    "RateLimitError",
    "ResponseMeta",
    "SignatureVerificationError",
    "__version__",
    "webhooks",
]
