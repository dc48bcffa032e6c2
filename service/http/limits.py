"""Rate limits per API key: a token bucket for requests, and one of its own for value reads.

Per replica: each process keeps its own buckets (N replicas let a key through up to N
times the rate). Over the limit, a request is refused with 429 and a Retry-After
before anything is read or written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from service import metrics
from service.clock import Clock
from service.errors import RateLimited

_MAX_BUCKETS = 100_000


@dataclass(frozen=True)
class Limit:
    per_second: float
    burst: int


class _Bucket:
    __slots__ = ("tokens", "updated")

    def __init__(self, tokens: float, updated: float) -> None:
        self.tokens = tokens
        self.updated = updated


class RateLimiter:
    """Token buckets by (API key, limit name); a limit of 0 per second is no limit."""

    def __init__(self, clock: Clock, limits: dict[str, Limit]) -> None:
        self._clock = clock
        self._limits = limits
        self._buckets: dict[tuple[str, str], _Bucket] = {}

    def take(self, api_key_id: str, name: str) -> None:
        """Spend one token of the key's bucket for limit `name`, or raise RateLimited (429)."""
        limit = self._limits[name]
        if limit.per_second <= 0:
            return
        now = self._clock.monotonic()
        bucket = self._buckets.get((api_key_id, name))
        if bucket is None:
            if len(self._buckets) >= _MAX_BUCKETS:
                self._forget_idle(now)
            bucket = self._buckets[(api_key_id, name)] = _Bucket(float(limit.burst), now)
        else:
            bucket.tokens = min(float(limit.burst), bucket.tokens + (now - bucket.updated) * limit.per_second)
            bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return
        metrics.RATE_LIMITED.labels(name).inc()
        retry_after = max(1, math.ceil((1.0 - bucket.tokens) / limit.per_second))
        raise RateLimited(
            f"This API key is over its limit of {limit.per_second:g} {name} per second; retry in {retry_after}s",
            {"Retry-After": str(retry_after)},
        )

    def _forget_idle(self, now: float) -> None:
        """Drop the buckets that have refilled: forgetting them changes no answer."""
        for key in [
            key
            for key, bucket in self._buckets.items()
            if bucket.tokens + (now - bucket.updated) * self._limits[key[1]].per_second
            >= self._limits[key[1]].burst
        ]:
            del self._buckets[key]
        if len(self._buckets) >= _MAX_BUCKETS:
            self._buckets.clear()
