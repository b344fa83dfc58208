"""Standard Webhooks signatures: secrets, signing, the delivery headers, verification.

A delivery is signed as ``v1,`` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")) where the
key is the base64-decoded part of the secret after ``whsec_`` (CONTRACT §5). During a secret
rotation every active secret signs and the signatures are sent space-separated, so a receiver
holding either secret verifies. The public ``standardwebhooks`` verifiers accept these unchanged.

``verify`` is the receiving side: the test suite and ``openpse listen`` use it. It compares in
constant time and refuses timestamps too far in the past *or* in the future.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets as _secrets
import time
from collections.abc import Mapping, Sequence

__all__ = [
    "MAX_SIGNATURES_PER_HEADER",
    "SECRET_BYTES",
    "SECRET_MIN_BYTES",
    "SECRET_PREFIX",
    "TIMESTAMP_TOLERANCE_S",
    "USER_AGENT",
    "SignatureVerificationError",
    "generate_secret",
    "headers_for",
    "sign",
    "signature_header",
    "verify",
]

SECRET_PREFIX = "whsec_"  # noqa: S105 (a prefix, not a secret)
SECRET_BYTES = 32
# CONTRACT §4 promises at least 24 random bytes; a shorter key is a programmer error.
SECRET_MIN_BYTES = 24
TIMESTAMP_TOLERANCE_S = 300
# Rotation normally sends two signatures; the bound keeps a header (and the verifier's work) small.
MAX_SIGNATURES_PER_HEADER = 16
# Longest accepted webhook-timestamp value: Unix seconds fit in 10 digits until the year 2286.
_TIMESTAMP_MAX_DIGITS = 12
USER_AGENT = "OpenPSE-Webhooks/1"
_VERSION = "v1"


class SignatureVerificationError(Exception):
    """A delivery's headers or signature did not verify; ``str(exc)`` says which check failed."""


def generate_secret() -> str:
    """A fresh endpoint secret: ``whsec_`` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(_secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def _key(secret: str) -> bytes:
    """The HMAC key inside ``secret``; raises ``ValueError`` if it is not a valid secret."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"a webhook secret starts with {SECRET_PREFIX!r}")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except binascii.Error as exc:
        raise ValueError("a webhook secret is base64 after its prefix") from exc
    if len(key) < SECRET_MIN_BYTES:
        raise ValueError(f"a webhook secret holds at least {SECRET_MIN_BYTES} bytes")
    return key


def _digest(key: bytes, msg_id: str, timestamp_s: int, body: bytes) -> bytes:
    signed = f"{msg_id}.{timestamp_s}.".encode() + body
    return hmac.new(key, signed, hashlib.sha256).digest()


def sign(secret: str, msg_id: str, timestamp_s: int, body: bytes) -> str:
    """One signature, ``v1,<base64>``, of ``body`` sent as message ``msg_id`` at ``timestamp_s``."""
    if not msg_id:
        raise ValueError("msg_id must not be empty")
    if timestamp_s < 0:
        raise ValueError("timestamp_s must not be negative")
    digest = _digest(_key(secret), msg_id, timestamp_s, body)
    return f"{_VERSION},{base64.b64encode(digest).decode('ascii')}"


def signature_header(secrets: Sequence[str], msg_id: str, timestamp_s: int, body: bytes) -> str:
    """The ``webhook-signature`` value: one signature per active secret, space-separated."""
    if not secrets:
        raise ValueError("at least one secret is needed to sign")
    if len(secrets) > MAX_SIGNATURES_PER_HEADER:
        raise ValueError(f"at most {MAX_SIGNATURES_PER_HEADER} secrets may sign one delivery")
    return " ".join(sign(s, msg_id, timestamp_s, body) for s in secrets)


def headers_for(
    secrets: Sequence[str], msg_id: str, timestamp_s: int, body: bytes
) -> dict[str, str]:
    """Every header of one delivery attempt (CONTRACT §5)."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp_s),
        "webhook-signature": signature_header(secrets, msg_id, timestamp_s, body),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance_s: int = TIMESTAMP_TOLERANCE_S,
    now_s: int | None = None,
) -> None:
    """Check a received delivery; raises ``SignatureVerificationError`` unless it verifies.

    Header names are matched case-insensitively. The timestamp must lie within ``tolerance_s``
    of ``now_s`` (default: the current time) in either direction. Any one ``v1`` signature in
    the header that matches is enough; the comparison is constant-time.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    msg_id = lowered.get("webhook-id", "")
    timestamp_text = lowered.get("webhook-timestamp", "")
    signatures = lowered.get("webhook-signature", "")
    if not (msg_id and timestamp_text and signatures):
        raise SignatureVerificationError(
            "missing header: webhook-id, webhook-timestamp and webhook-signature are all required"
        )
    if not (timestamp_text.isascii() and timestamp_text.isdigit()):
        raise SignatureVerificationError("webhook-timestamp is not whole Unix seconds")
    if len(timestamp_text) > _TIMESTAMP_MAX_DIGITS:
        raise SignatureVerificationError("webhook-timestamp is out of range")
    timestamp_s = int(timestamp_text)
    now = int(time.time()) if now_s is None else now_s
    if abs(now - timestamp_s) > tolerance_s:
        raise SignatureVerificationError(
            f"webhook-timestamp is {timestamp_s - now:+d} s from now; "
            f"at most {tolerance_s} s either way is accepted"
        )
    try:
        key = _key(secret)
    except ValueError as exc:
        raise SignatureVerificationError(str(exc)) from exc
    expected = _digest(key, msg_id, timestamp_s, body)
    parts = signatures.split()
    if len(parts) > MAX_SIGNATURES_PER_HEADER:
        raise SignatureVerificationError("webhook-signature carries too many signatures")
    matched = False
    for part in parts:
        version, _, encoded = part.partition(",")
        if version != _VERSION:
            continue
        try:
            candidate = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            continue
        # No early exit: every candidate is compared, so timing says nothing about which matched.
        matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise SignatureVerificationError("no signature in webhook-signature matches this secret")
