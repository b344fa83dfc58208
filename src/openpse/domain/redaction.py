"""What may be written to logs: card numbers, CVCs and secrets are masked before anything leaves.

``redact(obj)`` walks JSON-like data: values under sensitive keys are replaced, and any run of
13-19 digits that passes the Luhn check is masked wherever it appears (free-text fields too).
``redact_json(raw)`` does the same for a JSON document, and returns it as it came when a scan of
its text shows that ``redact`` would change nothing (most answers the API sends).
"""

from __future__ import annotations

import re
from typing import Any

import orjson

__all__ = ["mask_pans", "redact", "redact_json", "redact_text"]

SENSITIVE_KEYS = frozenset({
    "number", "cvc", "cvv", "secret", "password", "iban", "account_number", "token_secret",
    "card_number", "tax_id", "security_code", "card_cvc", "cvv2", "cvc2", "pan",
    "master_key", "authorization",
})
MASK = "[REDACTED]"
MAX_DEPTH = 32
_DIGIT_RUN = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")
_SECRET_RE = re.compile(r"\b(sk_(?:test|live)_[A-Za-z0-9]+|whsec_[A-Za-z0-9+/=]+)")


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def mask_pans(text: str) -> str:
    def _sub(m: re.Match[str]) -> str:
        digits = re.sub(r"[ -]", "", m.group(0))
        if 13 <= len(digits) <= 19 and _luhn(digits):
            return digits[:6] + "*" * (len(digits) - 10) + digits[-4:]
        return m.group(0)

    return _DIGIT_RUN.sub(_sub, text)


def redact_text(text: str) -> str:
    if len(text) < 13:  # too short to hold a card number (13-19 digits)
        return _SECRET_RE.sub(MASK, text) if "sk_" in text or "whsec_" in text else text
    return _SECRET_RE.sub(MASK, mask_pans(text))


def redact(obj: Any, depth: int = 0) -> Any:
    if depth > MAX_DEPTH:
        return MASK
    if isinstance(obj, dict):
        return {
            k: (MASK if isinstance(k, str) and k.lower() in SENSITIVE_KEYS and v is not None
                else redact(v, depth + 1))
            for k, v in obj.items()
        }
    if isinstance(obj, list):
        return [redact(v, depth + 1) for v in obj]
    if isinstance(obj, str):
        return redact_text(obj)
    if isinstance(obj, int) and not isinstance(obj, bool) and 10**12 <= abs(obj) < 10**19:
        # a number can be a card number too (a client may send one unquoted)
        masked = mask_pans(str(obj))
        return obj if masked == str(obj) else masked
    return obj


# What could make ``redact`` change a document, looked for in its text (a superset, so a find
# only means "walk it"): an escape (it could spell anything), a secret's prefix, a sensitive
# word in quotes (any case), 13 digits once spaces and dashes are taken out. Substring searches
# and translations: a regular expression tried at every digit costs more than the walk.
_QUOTED_KEY = re.compile(rb'"(?:' + "|".join(sorted(SENSITIVE_KEYS)).encode() + rb')"')
_DIGITS_AS_ONES = bytes(0x31 if 0x30 <= b <= 0x39 else 0x30 for b in range(256))
_THIRTEEN_DIGITS = b"1" * 13


def _maybe_sensitive(raw: bytes) -> bool:
    if b"\\" in raw:
        return True
    low = raw.lower()
    if b"sk_" in low or b"whsec_" in low or _QUOTED_KEY.search(low) is not None:
        return True
    return _THIRTEEN_DIGITS in raw.translate(_DIGITS_AS_ONES, b" -")


def _nested_past_limit(obj: Any) -> bool:
    """Whether ``redact`` would cut something for depth: a value below ``MAX_DEPTH`` levels of
    lists and objects. Walks containers only, level by level (a page of ten payments has 40
    brackets but is four levels deep)."""
    level, depth = ([obj] if isinstance(obj, (dict, list)) else []), 0
    while level:
        below: list[Any] = []
        for node in level:
            values = node.values() if isinstance(node, dict) else node
            if depth >= MAX_DEPTH and values:
                return True
            below.extend(v for v in values if isinstance(v, (dict, list)))
        level, depth = below, depth + 1
    return False


def redact_json(raw: bytes) -> str:
    """``raw`` (a JSON document) with ``redact`` applied; ValueError when it is not JSON."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValueError("not JSON") from exc
    if not _maybe_sensitive(raw) and (raw.count(b"{") + raw.count(b"[") <= MAX_DEPTH
                                      or not _nested_past_limit(obj)):
        return raw.decode()  # valid UTF-8 (orjson checked it), nothing to mask, not too deep
    return orjson.dumps(redact(obj)).decode()
