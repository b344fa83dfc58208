"""Request signing (CONTRACT §2): the canonical string a client signs and the server re-derives.

Pure functions, shared by the API's authentication and (as a copy) the merchant SDK::

    string_to_sign = "\\n".join([METHOD, path, canonical_query, timestamp, nonce, sha256(body)])
    signature      = hex(HMAC-SHA256(secret.encode("utf-8"), string_to_sign))

The server must feed :func:`string_to_sign` the path and raw query exactly as received on the
wire (still percent-encoded); :func:`canonical_query` does the decoding and re-encoding.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import re
from typing import Final
from urllib.parse import quote, unquote_to_bytes

from openpse.domain.errors import AuthenticationFailed

__all__ = [
    "NONCE_RE",
    "TIMESTAMP_RE",
    "body_sha256",
    "canonical_query",
    "is_valid_nonce",
    "parse_timestamp",
    "sign",
    "signatures_equal",
    "string_to_sign",
]

# \A and \Z rather than ^ and $: ``$`` would also accept a trailing newline.
NONCE_RE: Final = re.compile(r"\A[A-Za-z0-9_-]{16,64}\Z")
TIMESTAMP_RE: Final = re.compile(r"\A[0-9]{1,12}\Z")
_MILLISECONDS_RE: Final = re.compile(r"\A[0-9]{13}\Z")
_FORMATTED_TIME_RE: Final = re.compile(r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ]")
_ECHO_LIMIT_CHARS: Final = 40
_EXAMPLE_TIMESTAMP_S: Final = 1763773200


def _encode(component: str) -> str:
    """RFC 3986 percent-decode then re-encode one query component (``+`` stays a plus sign).

    Works on bytes, so a decoded sequence that is not valid UTF-8 survives unchanged instead of
    raising; a stray ``%`` that does not start ``%XX`` is taken literally and becomes ``%25``.
    """
    # safe="": quote() then keeps exactly the RFC 3986 unreserved set A-Za-z0-9-._~
    return quote(unquote_to_bytes(component), safe="")


def canonical_query(raw_query: str) -> str:
    """The canonical form of a raw query string (the part after ``?``, as received).

    Every pair is kept (repeated keys too), each side re-encoded, sorted by encoded key then
    encoded value and joined by ``&``; empty segments (``a=1&&b=2``) are skipped.
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
    """The six lines of CONTRACT §2 joined by ``\\n`` (no trailing newline)."""
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


def signatures_equal(a: str, b: str) -> bool:
    """Constant-time comparison of two signatures."""
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


def is_valid_nonce(value: str) -> bool:
    """True when ``value`` is 16-64 characters of ``[A-Za-z0-9_-]``."""
    return NONCE_RE.match(value) is not None


def _echo(value: str) -> str:
    if len(value) <= _ECHO_LIMIT_CHARS:
        return repr(value)
    return repr(value[:_ECHO_LIMIT_CHARS] + "...")


def _formatted_time_hint(value: str) -> str:
    """For an RFC 3339 text, the Unix seconds it stands for, if it parses with an offset."""
    try:
        parsed = datetime.datetime.fromisoformat(value)
    except ValueError:
        return ""
    if parsed.tzinfo is None:
        return ""
    return f" (that time is {int(parsed.timestamp())})"


def _timestamp_message(value: str) -> str:
    if _MILLISECONDS_RE.match(value):
        return (
            "X-PSE-Timestamp looks like milliseconds; send whole seconds since the Unix epoch, "
            f"e.g. {_EXAMPLE_TIMESTAMP_S}"
        )
    if _FORMATTED_TIME_RE.match(value):
        return (
            "X-PSE-Timestamp must be Unix time in whole seconds (UTC), not a formatted time "
            f"such as {_echo(value)}; send e.g. {_EXAMPLE_TIMESTAMP_S}"
            f"{_formatted_time_hint(value)}"
        )
    return (
        "X-PSE-Timestamp must be Unix time in whole seconds (UTC) as 1-12 decimal digits, "
        f"e.g. {_EXAMPLE_TIMESTAMP_S}; got {_echo(value)}"
    )


def parse_timestamp(value: str) -> int:
    """The ``X-PSE-Timestamp`` header as Unix seconds.

    Raises ``AuthenticationFailed(code="invalid_timestamp")`` with a message that names the
    likely mistake (milliseconds, a formatted time) when it is not 1-12 decimal digits.
    """
    if TIMESTAMP_RE.match(value):
        return int(value)
    raise AuthenticationFailed(_timestamp_message(value), code="invalid_timestamp")
