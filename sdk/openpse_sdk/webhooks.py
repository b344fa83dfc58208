"""Receiving OpenPSE webhooks: verify each delivery, then drop what is stale or repeated.

Deliveries follow the Standard Webhooks scheme (CONTRACT §5)::

    webhook-id:        the event id (the same on every redelivery of that event)
    webhook-timestamp: Unix seconds when this attempt was signed
    webhook-signature: "v1,<base64 HMAC-SHA256(key, f'{id}.{timestamp}.{body}')>" [...]

where ``key`` is the base64-decoded part of the endpoint secret after ``whsec_``. During a
secret rotation the server signs with both secrets and sends both signatures, space-separated;
a receiver holding either one verifies.

A handler in a few lines::

    event = webhooks.verify(request_body, request.headers, [secret_new, secret_old])
    with db.transaction():
        if db.seen_event(event["id"]):            # redelivered: acknowledge, do nothing
            return 200
        if webhooks.is_stale(event, db.version_of(event["data"]["object"]["id"])):
            return 200                             # an older state arrived after a newer one
        apply(event); db.remember(event)
    return 200

Delivery is at-least-once and unordered, so both checks matter: the event id makes repeats
harmless, the object's ``version`` makes late arrivals harmless.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, Final

from openpse_sdk.errors import SignatureVerificationError

__all__ = [
    "DEFAULT_TOLERANCE_S",
    "SECRET_PREFIX",
    "VersionTracker",
    "is_stale",
    "object_version",
    "sign",
    "signed_headers",
    "verify",
]

SECRET_PREFIX: Final = "whsec_"  # noqa: S105 (a prefix, not a secret)
DEFAULT_TOLERANCE_S: Final = 300  # the Standard Webhooks default, both directions
MAX_SIGNATURES: Final = 16  # rotation sends two; the bound keeps the verifier's work small
MAX_TIMESTAMP_DIGITS: Final = 12
DEFAULT_MAX_TRACKED_OBJECTS: Final = 100_000
_VERSION: Final = "v1"


def _key(secret: str) -> bytes:
    """The HMAC key inside an endpoint secret (``whsec_`` + base64; the prefix is optional).

    A malformed secret is a configuration mistake, not a bad delivery: it raises ``ValueError``
    so the handler fails loudly (5xx, redelivered later) instead of refusing every event.
    """
    if not isinstance(secret, str) or not secret:
        raise ValueError("a webhook secret is a non-empty string (whsec_...)")
    encoded = secret[len(SECRET_PREFIX) :] if secret.startswith(SECRET_PREFIX) else secret
    try:
        key = base64.b64decode(encoded, validate=True)
    except binascii.Error as exc:
        raise ValueError("a webhook secret is 'whsec_' followed by base64") from exc
    if not key:
        raise ValueError("a webhook secret holds at least one byte after 'whsec_'")
    return key


def _digest(key: bytes, msg_id: str, timestamp_s: int, payload: bytes) -> bytes:
    return hmac.new(key, f"{msg_id}.{timestamp_s}.".encode() + payload, hashlib.sha256).digest()


def _as_bytes(payload: bytes | str) -> bytes:
    return payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)


def _secrets(secret_or_secrets: str | Sequence[str]) -> list[str]:
    found = [secret_or_secrets] if isinstance(secret_or_secrets, str) else list(secret_or_secrets)
    if not found:
        raise ValueError("at least one webhook secret is needed")
    return found


def sign(payload: bytes | str, secret: str, *, msg_id: str, timestamp_s: int) -> str:
    """One signature, ``v1,<base64>``: what the server puts in ``webhook-signature``.

    For tests and tools that send deliveries themselves (``openpse listen``, ``doctor``).
    """
    if not msg_id:
        raise ValueError("msg_id must not be empty")
    digest = _digest(_key(secret), msg_id, int(timestamp_s), _as_bytes(payload))
    return f"{_VERSION},{base64.b64encode(digest).decode('ascii')}"


def signed_headers(
    payload: bytes | str,
    secret_or_secrets: str | Sequence[str],
    *,
    msg_id: str,
    timestamp_s: int | None = None,
) -> dict[str, str]:
    """The three Standard Webhooks headers of one delivery, signed by every secret given."""
    ts = int(time.time()) if timestamp_s is None else int(timestamp_s)
    signature = " ".join(
        sign(payload, secret, msg_id=msg_id, timestamp_s=ts)
        for secret in _secrets(secret_or_secrets)
    )
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": signature}


def _fail(message: str, reason: str, sig_header: str | None = None) -> SignatureVerificationError:
    return SignatureVerificationError(message, code=reason, sig_header=sig_header)


def _timestamp(text: str, now_s: float, tolerance_s: int) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > MAX_TIMESTAMP_DIGITS:
        raise _fail(
            f"webhook-timestamp {text[:32]!r} is not whole Unix seconds", "invalid_timestamp"
        )
    timestamp_s = int(text)
    skew_s = int(now_s) - timestamp_s
    if skew_s > tolerance_s:
        raise _fail(
            f"webhook-timestamp is {skew_s} s old (at most {tolerance_s} s is accepted): a "
            "replayed delivery, or this machine's clock is fast",
            "timestamp_too_old",
        )
    if -skew_s > tolerance_s:
        raise _fail(
            f"webhook-timestamp is {-skew_s} s in the future (at most {tolerance_s} s is "
            "accepted): this machine's clock is slow, or the delivery is forged",
            "timestamp_too_new",
        )
    return timestamp_s


def verify(
    payload: bytes | str,
    headers: Mapping[str, str],
    secret_or_secrets: str | Sequence[str],
    *,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> dict[str, Any]:
    """Check one delivery and return its event; raise ``SignatureVerificationError`` if not.

    ``payload`` must be the raw request body exactly as received (not re-serialised JSON).
    ``headers`` may be any mapping; names are matched case-insensitively. Give every secret
    that is valid now (during a rotation: the new and the old); any one matching signature is
    enough. The timestamp must be within ``tolerance_s`` of ``now`` (default: the current time)
    in either direction. Signatures are compared in constant time. The error's ``code`` says
    which check failed: ``missing_header``, ``invalid_timestamp``, ``timestamp_too_old``,
    ``timestamp_too_new``, ``no_matching_signature`` or ``invalid_payload``.
    """
    body = _as_bytes(payload)
    keys = [_key(secret) for secret in _secrets(secret_or_secrets)]
    lowered = {str(name).lower(): value for name, value in headers.items()}
    msg_id = lowered.get("webhook-id", "")
    timestamp_text = lowered.get("webhook-timestamp", "")
    sig_header = lowered.get("webhook-signature", "")
    missing = [name for name, value in (("webhook-id", msg_id),
                                        ("webhook-timestamp", timestamp_text),
                                        ("webhook-signature", sig_header)) if not value]
    if missing:
        raise _fail(f"missing header(s): {', '.join(missing)}", "missing_header", sig_header)
    now_s = time.time() if now is None else now
    timestamp_s = _timestamp(timestamp_text.strip(), now_s, tolerance_s)
    candidates = sig_header.split()
    if len(candidates) > MAX_SIGNATURES:
        raise _fail("webhook-signature carries too many signatures", "no_matching_signature",
                    sig_header)
    expected = [_digest(key, msg_id, timestamp_s, body) for key in keys]
    matched = False
    for candidate in candidates:
        version, _, encoded = candidate.partition(",")
        if version != _VERSION:
            continue
        try:
            received = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            continue
        for digest in expected:  # no early exit: timing says nothing about which one matched
            matched |= hmac.compare_digest(digest, received)
    if not matched:
        raise _fail(
            "no signature in webhook-signature matches the secret(s) given: check that the "
            "secret is this endpoint's (whsec_...) and that the body is the raw bytes received",
            "no_matching_signature",
            sig_header,
        )
    try:
        event = json.loads(body)
    except ValueError as exc:
        raise _fail("the signed body is not JSON", "invalid_payload") from exc
    if not isinstance(event, dict):
        raise _fail("the signed body is not a JSON object", "invalid_payload")
    return event


def object_version(event: Mapping[str, Any]) -> int:
    """``event.data.object.version``: grows by one with every change of the object."""
    data = event.get("data")
    obj = data.get("object") if isinstance(data, Mapping) else None
    version = obj.get("version") if isinstance(obj, Mapping) else None
    if not isinstance(version, int) or isinstance(version, bool):
        raise ValueError("the event has no integer data.object.version")
    return version


def _object_id(event: Mapping[str, Any]) -> str:
    data = event.get("data")
    obj = data.get("object") if isinstance(data, Mapping) else None
    object_id = obj.get("id") if isinstance(obj, Mapping) else None
    if not isinstance(object_id, str) or not object_id:
        raise ValueError("the event has no data.object.id")
    return object_id


def is_stale(event: Mapping[str, Any], last_seen_version: int | None) -> bool:
    """Whether the event shows its object at a version already applied (or older).

    ``last_seen_version`` is the version of that object you last acted on (``None``: never).
    A stale event is a repeat or an out-of-order late arrival: acknowledge it (2xx) and do
    nothing, since the newer state has been handled already.
    """
    if last_seen_version is None:
        return False
    return object_version(event) <= last_seen_version


class VersionTracker:
    """Last applied version per object id, in memory, for one process (thread-safe).

    Call :meth:`is_stale` before handling an event and :meth:`record` after handling it
    succeeded, so a failed attempt is retried rather than skipped. It remembers at most
    ``max_objects`` objects (least recently updated forgotten first); a process restart
    forgets everything. For more than a demo, keep the version in your own database, next to
    the state it guards, and compare inside the same transaction (see the integration guide).
    """

    def __init__(self, max_objects: int = DEFAULT_MAX_TRACKED_OBJECTS) -> None:
        if max_objects < 1:
            raise ValueError("max_objects must be at least 1")
        self.max_objects = max_objects
        self._versions: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()

    def last_seen(self, object_id: str) -> int | None:
        with self._lock:
            return self._versions.get(object_id)

    def is_stale(self, event: Mapping[str, Any]) -> bool:
        return is_stale(event, self.last_seen(_object_id(event)))

    def record(self, event: Mapping[str, Any]) -> None:
        """Remember the event's object version (never moves backwards)."""
        object_id, version = _object_id(event), object_version(event)
        with self._lock:
            if version > self._versions.get(object_id, 0):
                self._versions[object_id] = version
                self._versions.move_to_end(object_id)
            while len(self._versions) > self.max_objects:
                self._versions.popitem(last=False)
