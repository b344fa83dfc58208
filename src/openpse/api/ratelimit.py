"""Per-access-key token buckets (CONTRACT §7): in-process by default, Redis when configured.

Rate ``r`` requests/s, burst ``2r``. ``0`` means unlimited. The Redis variant runs the same
bucket as one Lua script, so every API process shares each key's budget.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["Decision", "LocalRateLimiter", "RateLimiter", "RedisRateLimiter", "make_rate_limiter"]

MAX_TRACKED_KEYS = 100_000


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_s: int  # seconds until the bucket is full again
    retry_after_s: int  # when refused: seconds until one token is there

    def headers(self) -> dict[str, str]:
        return {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_s),
        }


class RateLimiter(Protocol):
    async def hit(self, key: str, rate_per_s: int) -> Decision: ...


def _decide(tokens: float, rate: int, burst: int, allowed: bool) -> Decision:
    remaining = max(0, math.floor(tokens))
    reset_s = math.ceil((burst - tokens) / rate) if tokens < burst else 0
    retry = 0 if allowed else max(1, math.ceil((1 - tokens) / rate))
    return Decision(allowed, burst, remaining, reset_s, retry)


class LocalRateLimiter:
    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}

    async def hit(self, key: str, rate_per_s: int) -> Decision:
        return self.hit_sync(key, rate_per_s, time.monotonic())

    def hit_sync(self, key: str, rate: int, now: float) -> Decision:
        burst = 2 * rate
        tokens, last = self._buckets.get(key, (float(burst), now))
        tokens = min(float(burst), tokens + (now - last) * rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        if len(self._buckets) >= MAX_TRACKED_KEYS and key not in self._buckets:
            self._buckets.clear()  # bounded memory; a full bucket is the safe default
        self._buckets[key] = (tokens, now)
        return _decide(tokens, rate, burst, allowed)


_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'last')
local tokens = tonumber(state[1]) or burst
local last = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - last) * rate)
local allowed = 0
if tokens >= 1 then tokens = tokens - 1; allowed = 1 end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'last', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 1)
return {allowed, tostring(tokens)}
"""


class RedisRateLimiter:
    def __init__(self, client: Any) -> None:
        self._redis = client
        self._script = client.register_script(_LUA)

    async def hit(self, key: str, rate_per_s: int) -> Decision:
        burst = 2 * rate_per_s
        allowed, tokens = await self._script(
            keys=[f"openpse:rl:{key}"], args=[rate_per_s, burst, time.time()]
        )
        return _decide(float(tokens), rate_per_s, burst, bool(int(allowed)))


def make_rate_limiter(redis_client: Any | None) -> RateLimiter:
    return RedisRateLimiter(redis_client) if redis_client is not None else LocalRateLimiter()
