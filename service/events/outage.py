"""A broker outage as the log tells it: once when it starts, now and then while it lasts, once when it ends.

The relay retries a failed publish with a backoff; logging every attempt (and letting
aiokafka log every reconnection) buried the log while a broker was away. This is the
one place that decides what an outage writes.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from service.clock import Clock

logger = logging.getLogger("service.events")

REMIND_SECONDS = 30.0

Pending = Callable[[], Awaitable[int | None]]


class OutageLog:
    """One ERROR line when publishing starts failing (with its cause and what waits in the outbox), at
    most one ERROR line every `remind_seconds` while it keeps failing (the latest cause, the pending
    count), and one WARNING line when a publish succeeds again."""

    def __init__(self, clock: Clock, remind_seconds: float = REMIND_SECONDS) -> None:
        self._clock = clock
        self._remind_seconds = remind_seconds
        self._since: float | None = None
        self._last_line = 0.0
        self._failures = 0

    @property
    def ongoing(self) -> bool:
        return self._since is not None

    async def failed(self, cause: str, pending: Pending) -> None:
        """A publish failed; `pending` counts the outbox, asked only when a line is written."""
        now = self._clock.monotonic()
        self._failures += 1
        if self._since is None:
            self._since = self._last_line = now
            logger.error(
                "Kafka unavailable: %s; events wait in the outbox (%s pending) and go out when it is back",
                cause,
                _count(await pending()),
            )
        elif now - self._last_line >= self._remind_seconds:
            self._last_line = now
            logger.error(
                "Kafka still unavailable after %.0fs (%d failed attempts): %s; %s events pending in the outbox",
                now - self._since,
                self._failures,
                cause,
                _count(await pending()),
            )

    def succeeded(self) -> None:
        """A publish was acknowledged: the end of an outage, if one was under way."""
        if self._since is None:
            return
        logger.warning(
            "Kafka available again after %.0fs (%d failed attempts); publishing what waited in the outbox",
            self._clock.monotonic() - self._since,
            self._failures,
        )
        self._since = None
        self._failures = 0


def _count(pending: int | None) -> str:
    return "unknown" if pending is None else str(pending)
