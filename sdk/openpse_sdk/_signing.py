"""Request signing (OpenPSE API contract §2).

A copy of the server's ``openpse.domain.signing`` canonicalisation, so the SDK stands alone;
the server's test suite checks that both copies agree::

    string_to_sign = "\\n".join([METHOD, path, canonical_query, timestamp, nonce, sha256(body)])
    signature      = hex(HMAC-SHA256(secret.encode("utf-8"), string_to_sign))
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import quote, unquote_to_bytes

__all__ = ["body_sha256", "canonical_query", "sign", "string_to_sign"]


def _encode(component: str) -> str:
    """RFC 3986 percent-decode then re-encode one query component (``+`` stays a plus sign)."""
    # safe="": quote() then keeps exactly the RFC 3986 unreserved set A-Za-z0-9-._~
    return quote(unquote_to_bytes(component), safe="")


def canonical_query(raw_query: str) -> str:
    """The canonical form of a raw query string (the part after ``?``, as sent).

    Every pair is kept (repeated keys too), each side re-encoded, sorted by encoded key then
    encoded value and joined by ``&``; empty segments are skipped; ``k`` alone means ``k=``.
    """
    pairs: list[tuple[str, str]] = []
    for segment in raw_query.split("&"):
        if not segment:
            continue
        key, _, value = segment.partition("=")
        pairs.append((_encode(key), _encode(value)))
    pairs.sort()
    return "&".join(f"{key}={value}" for key, value in pairs)


def body_sha256(body: bytes) -> str:
    """Lower-case hex SHA-256 of the raw body bytes (of ``b""`` when there is no body)."""
    return hashlib.sha256(body).hexdigest()


def string_to_sign(
    method: str,
    path: str,
    raw_query: str,
    timestamp: str | int,
    nonce: str,
    body: bytes,
) -> str:
    """The six lines of contract §2 joined by ``\\n`` (no trailing newline)."""
    return "\n".join(
        (
            method.upper(),
            path,
            canonical_query(raw_query),
            str(timestamp),
            nonce,
            body_sha256(body),
        )
    )


def sign(secret: str, sts: str) -> str:
    """Lower-case hex HMAC-SHA256 of ``sts`` keyed with the secret's UTF-8 bytes."""
    return hmac.new(secret.encode("utf-8"), sts.encode("utf-8"), hashlib.sha256).hexdigest()
