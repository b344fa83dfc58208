"""The token bucket (CONTRACT §7) with a hand-driven clock: burst of twice the rate, refill at
the rate, and the numbers that become Retry-After and the RateLimit-* headers."""

from __future__ import annotations

import pytest

from openpse.api.ratelimit import Decision, LocalRateLimiter


def _drain(limiter: LocalRateLimiter, key: str, rate: int, now: float) -> list[Decision]:
    return [limiter.hit_sync(key, rate, now) for _ in range(4 * rate + 2)]


@pytest.mark.parametrize("rate", [1, 2, 100])
def test_burst_is_twice_the_rate(rate):
    decisions = _drain(LocalRateLimiter(), "ak", rate, now=1000.0)
    allowed = [d for d in decisions if d.allowed]
    assert len(allowed) == 2 * rate
    assert not any(d.allowed for d in decisions[2 * rate:])
    assert [d.remaining for d in allowed] == list(range(2 * rate - 1, -1, -1))
    assert all(d.limit == 2 * rate for d in decisions)


def test_refused_decision_carries_retry_after_and_reset():
    limiter = LocalRateLimiter()
    decisions = _drain(limiter, "ak", 2, now=50.0)
    refused = decisions[-1]
    assert not refused.allowed and refused.remaining == 0
    assert refused.retry_after_s == 1  # one token comes back in 0.5 s: rounded up to 1
    assert refused.reset_s == 2  # four tokens at 2/s
    assert refused.headers() == {"RateLimit-Limit": "4", "RateLimit-Remaining": "0",
                                 "RateLimit-Reset": "2"}
    assert decisions[0].retry_after_s == 0


def test_tokens_come_back_at_the_rate():
    limiter = LocalRateLimiter()
    _drain(limiter, "ak", 2, now=10.0)
    assert not limiter.hit_sync("ak", 2, 10.4).allowed
    assert limiter.hit_sync("ak", 2, 10.6).allowed  # 0.6 s at 2/s: one token
    assert not limiter.hit_sync("ak", 2, 10.6).allowed
    after_idle = [limiter.hit_sync("ak", 2, 1000.0) for _ in range(6)]
    assert [d.allowed for d in after_idle] == [True] * 4 + [False] * 2  # never above burst


def test_keys_have_separate_buckets():
    limiter = LocalRateLimiter()
    _drain(limiter, "ak_a", 1, now=5.0)
    assert not limiter.hit_sync("ak_a", 1, 5.0).allowed
    assert limiter.hit_sync("ak_b", 1, 5.0).allowed


def test_a_clock_that_goes_back_does_not_mint_tokens():
    limiter = LocalRateLimiter()
    _drain(limiter, "ak", 1, now=100.0)
    assert not limiter.hit_sync("ak", 1, 40.0).allowed
