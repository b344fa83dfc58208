"""Opaque, prefixed, time-ordered identifiers (``pay_...``, ``evt_...``).

An id is the prefix plus 26 characters of Crockford base32: 48 bits of milliseconds since the
epoch followed by 80 random bits (a ULID). Ids therefore sort by creation time, which keeps
B-tree inserts local and gives cursor pagination a stable order.
"""

from __future__ import annotations

import os
import threading
import time

__all__ = ["PREFIXES", "first_id_at", "new_id", "prefix_of"]

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"

PREFIXES = {
    "merchant": "mch_",
    "access_key_test": "ak_test_",
    "access_key_live": "ak_live_",
    "payment": "pay_",
    "refund": "re_",
    "checkout_session": "cs_",
    "event": "evt_",
    "webhook_endpoint": "we_",
    "payment_method": "pm_",
    "dispute": "dp_",
    "settlement": "st_",
    "payout": "po_",
    "request": "req_",
    "journal": "jnl_",
    "attempt": "att_",
    "delivery": "whd_",
    "review": "rev_",
}


# Two digits per lookup: an id's 26 digits are 13 lookups and a join.
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]
_PAIR_SHIFTS: dict[int, range] = {}


def _encode(value: int, length: int) -> str:
    """The low ``length * 5`` bits of ``value`` as ``length`` Crockford base32 digits, most
    significant first."""
    shifts = _PAIR_SHIFTS.get(length)
    if shifts is None:
        shifts = _PAIR_SHIFTS[length] = range((length - length % 2) * 5 - 10, -1, -10)
    head = _ALPHABET[(value >> (length * 5 - 5)) & 31] if length % 2 else ""
    return head + "".join([_PAIRS[(value >> s) & 1023] for s in shifts])


_last_value = 0
_lock = threading.Lock()
_STEP_BYTES = 2
MAX_STEP = 1 << (8 * _STEP_BYTES)

# Randomness read from the OS 4 KiB at a time and handed out in slices, under ``_lock``: a
# payment makes about fifteen ids, and ``secrets.randbits``/``randbelow`` read the OS for each
# (a system call apiece, ≈ 1-2 µs here). A child process starts with an empty pool, so a
# fork never hands the parent's bytes out twice.
_POOL_BYTES = 4096
_pool = b""
_pos = 0


def _forget_pool() -> None:
    global _pool, _pos
    _pool, _pos = b"", 0


os.register_at_fork(after_in_child=_forget_pool)


def _random_int(nbytes: int) -> int:
    """``nbytes`` random bytes from the OS as a big-endian int (call with ``_lock`` held)."""
    global _pool, _pos
    start, end = _pos, _pos + nbytes
    if end > len(_pool):
        _pool, start, end = os.urandom(_POOL_BYTES), 0, nbytes
    _pos = end
    return int.from_bytes(_pool[start:end], "big")


def new_id(prefix: str, *, now_ms: int | None = None) -> str:
    """A fresh id with ``prefix`` (which should end with ``_``).

    Within one process ids strictly increase, even several in one millisecond or when the clock
    steps back (the random part then grows by a random step from the previous id), so "newest
    first by id" is exactly creation order for what a process writes."""
    global _last_value
    with _lock:
        if now_ms is not None:
            return prefix + _encode((now_ms << 80) | _random_int(10), 26)
        value = (int(time.time() * 1000) << 80) | _random_int(10)
        if value <= _last_value:
            value = _last_value + 1 + _random_int(_STEP_BYTES)  # a step of 1 to MAX_STEP
        _last_value = value
    return prefix + _encode(value, 26)


def first_id_at(prefix: str, ms: int) -> str:
    """The smallest id with ``prefix`` that :func:`new_id` can make at millisecond ``ms`` (every
    id made at ``ms`` or later sorts at or after it)."""
    return prefix + _encode(max(0, ms) << 80, 26)


def prefix_of(object_id: str) -> str:
    """The prefix of ``object_id`` including the trailing underscore(s) (``ak_test_``)."""
    for p in sorted(PREFIXES.values(), key=len, reverse=True):
        if object_id.startswith(p):
            return p
    head, sep, _ = object_id.partition("_")
    return head + sep
