"""When to try a call again, and how long to wait first: capped exponential backoff with full
jitter, and never sooner than a Retry-After says."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """`attempts` tries in all; a Retry-After longer than `max_retry_after` seconds is not waited for."""

    attempts: int = 5
    base_delay: float = 0.1
    max_delay: float = 5.0
    max_retry_after: float = 30.0

    def backoff(self, retry: int) -> float:
        """The wait before retry number `retry` (0-based): uniform in [0, min(max, base * 2^retry)]."""
        return random.uniform(0, min(self.max_delay, self.base_delay * 2**retry))

    def delay(self, retry: int, retry_after: float | None) -> float | None:
        """How long to wait before retry `retry`, or None when the call should give up now."""
        if retry + 1 >= self.attempts:
            return None
        if retry_after is None:
            return self.backoff(retry)
        if retry_after > self.max_retry_after:
            return None
        # Never sooner than asked; the jitter keeps clients told the same instant apart.
        return retry_after + self.backoff(retry)


NO_RETRIES = RetryPolicy(attempts=1)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP-date), or None."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
