"""Time, passed in where it matters, so that tests set it instead of patching globals."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The wall-clock time, timezone-aware UTC."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back, for intervals and expiries."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()


def iso_utc(instant: datetime) -> str:
    """The API's timestamp form: ISO 8601, UTC, milliseconds, Z."""
    return instant.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def later_than_text(at: str, previous: str) -> str:
    """Timestamp `at`, or one millisecond after `previous` when the clock has not moved past it.

    Keeps a record's updatedAt moving forward across updates within a millisecond, or
    after the clock stepped back.
    """
    if at > previous:
        return at
    return iso_utc(datetime.fromisoformat(previous) + timedelta(milliseconds=1))
