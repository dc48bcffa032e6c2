"""A publisher that keeps what it is given, for unit tests of the relay (the real broker is tested apart)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from service.events.model import OutboxEvent
from service.events.publisher import PublishFailed


class InMemoryPublisher:
    """Records every published event; can be made to fail, or to hold each publish until released."""

    def __init__(self) -> None:
        self.published: list[OutboxEvent] = []
        self.calls = 0
        self.failures = 0  # how many of the next publishes raise
        self.gate: asyncio.Event | None = None  # when set, each publish waits for it
        self.entered = asyncio.Event()
        self.closed = 0

    async def publish(self, events: Sequence[OutboxEvent]) -> None:
        self.calls += 1
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.failures:
            self.failures -= 1
            raise PublishFailed("the in-memory broker is down")
        self.published.extend(events)

    async def close(self) -> None:
        self.closed += 1

    def subjects(self) -> list[str]:
        return [event.subject for event in self.published]
