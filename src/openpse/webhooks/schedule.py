"""When to try a failed webhook delivery again (CONTRACT §5); pure, no I/O, no clock.

Attempt 1 is the first send. After attempt *n* fails, the next waits ``RETRY_DELAYS_S[n - 1]``
(5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h, 24 h), each jittered by up to ±10 % so that
deliveries that failed together do not retry together. After attempt ``MAX_ATTEMPTS`` (the
tenth) fails, the delivery is marked failed. An endpoint whose deliveries have failed without a
success for ``ENDPOINT_DISABLE_AFTER_S`` (5 days) is disabled; a 410 disables it at once.
"""

from __future__ import annotations

from typing import Protocol

__all__ = [
    "ENDPOINT_DISABLE_AFTER_S",
    "JITTER_FRACTION",
    "MAX_ATTEMPTS",
    "RETRY_AFTER_CAP_S",
    "RETRY_DELAYS_S",
    "UniformRandom",
    "endpoint_should_be_disabled",
    "next_delay_s",
]

RETRY_DELAYS_S: tuple[int, ...] = (5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400)
MAX_ATTEMPTS = len(RETRY_DELAYS_S) + 1
JITTER_FRACTION = 0.10
RETRY_AFTER_CAP_S = 86400
ENDPOINT_DISABLE_AFTER_S = 5 * 86400
_MIN_DELAY_S = 1


class UniformRandom(Protocol):
    """What the schedule needs from a random source; ``random.Random`` fits."""

    def uniform(self, a: float, b: float) -> float: ...


def next_delay_s(
    attempt_number: int, *, retry_after_s: int | None, rng: UniformRandom
) -> int | None:
    """Seconds to wait before the next attempt after attempt ``attempt_number`` failed.

    ``None`` means give up: ``attempt_number`` was the last (``MAX_ATTEMPTS``), and the delivery
    is marked failed. ``retry_after_s`` is the receiver's ``Retry-After`` (429/503 only). It is
    honoured when it asks for *more* time than the jittered schedule, capped at
    ``RETRY_AFTER_CAP_S`` (24 h); it never shortens the schedule (a ``Retry-After: 0`` must not
    turn the backoff into a hammering loop) and never adds attempts beyond ``MAX_ATTEMPTS``.
    """
    if attempt_number < 1:
        raise ValueError("attempt_number starts at 1")
    if attempt_number >= MAX_ATTEMPTS:
        return None
    base_s = RETRY_DELAYS_S[attempt_number - 1]
    low, high = 1.0 - JITTER_FRACTION, 1.0 + JITTER_FRACTION
    # Clamped so that a misbehaving random source still cannot break the ±10 % bound.
    factor = min(max(rng.uniform(low, high), low), high)
    delay_s = max(_MIN_DELAY_S, round(base_s * factor))
    if retry_after_s is not None:
        delay_s = max(delay_s, min(retry_after_s, RETRY_AFTER_CAP_S))
    return delay_s


def endpoint_should_be_disabled(failing_since_s: float | None, *, now_s: float) -> bool:
    """True once an endpoint has failed without a success for ``ENDPOINT_DISABLE_AFTER_S``.

    ``failing_since_s`` is the Unix time of the first failure after the last success (``None``
    while the endpoint is healthy).
    """
    return failing_since_s is not None and now_s - failing_since_s >= ENDPOINT_DISABLE_AFTER_S
