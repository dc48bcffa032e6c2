"""Idempotency-Key records are kept a day, as clients of such APIs expect, then forgotten."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta

from service.clock import Clock, iso_utc
from service.db.plan import StatementJob
from service.db.store import Store
from service.secrets import sql

logger = logging.getLogger("service.secrets")

IDEMPOTENCY_RETENTION = timedelta(hours=24)


class IdempotencyRetention:
    """A background task that deletes expired Idempotency-Key records every `every_seconds`."""

    def __init__(self, store: Store, clock: Clock, every_seconds: float = 60.0) -> None:
        self._store = store
        self._clock = clock
        self._every_seconds = every_seconds
        self._task: asyncio.Task[None] | None = None

    async def prune(self) -> int:
        """Delete the records past retention now; returns how many."""
        before = iso_utc(self._clock.now() - IDEMPOTENCY_RETENTION)
        pruned: int = await self._store.write(StatementJob(sql.prune_idempotency_keys(before)))
        return pruned

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="idempotency-retention")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                await self.prune()
            except Exception as exc:
                logger.warning("pruning Idempotency-Key records failed (%s)", type(exc).__name__)
            await asyncio.sleep(self._every_seconds)
