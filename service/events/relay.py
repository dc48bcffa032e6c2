"""The outbox relay: publishes committed events in commit order, then records them as published.

Delivery is at least once (publish, then record), and consumers drop repeats by the
CloudEvents id. With several replicas only the holder of the relay lease publishes,
so events are not published many times and stay in order; when it dies, a standby
takes the lease on its next poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol

from service import metrics
from service.clock import Clock, iso_utc
from service.db.lease import Lease
from service.db.plan import Execute, Fetch, StatementJob
from service.db.store import Store
from service.events import sql
from service.events.model import OutboxEvent
from service.events.outage import REMIND_SECONDS, OutageLog
from service.events.publisher import Publisher, PublishFailed

logger = logging.getLogger("service.events")

RELAY_LOCK = 0x5EC7E76
BATCH = 500
PRUNE_CHUNK = 10_000
_PRUNE_EVERY_SECONDS = 60.0
# Under load a commit lands every few ms; gathering them for a moment makes fewer, fuller rounds.
_GATHER_SECONDS = 0.02
_NOT_YET = float("inf")
_MEASURE_EVERY_SECONDS = 5.0
# Where one record covers every event before it (a cursor), it is written at most this often while
# the relay is busy, and at once when it idles or stops: a commit every round cost the relay more
# CPU than the events it published. After a crash, at most this long's events go out again.
_RECORD_EVERY_SECONDS = 0.5


class Progress(Protocol):
    """How the relay knows which events are published."""

    # Whether each `published` statement records every event before it too, so that only the
    # latest need be written.
    cumulative: bool

    async def pending(self, store: Store, limit: int) -> list[OutboxEvent]: ...

    def published(self, events: list[OutboxEvent], at: str) -> Execute:
        """The statement that records these events as published at `at` (committed in the background)."""
        ...

    def recorded(self, events: list[OutboxEvent]) -> None:
        """That statement has committed, or failed (the events then go out again: at least once)."""
        ...

    def prune(self, before: str, limit: int) -> Execute: ...

    def count_pending(self) -> Fetch: ...

    def backlog(self) -> Fetch:
        """(how many, created_at of the oldest) of the events not yet published."""
        ...


class CursorProgress:
    """A single writer: what is published is one seq, as commits happen in seq order.

    The relay reads after its own in-memory cursor, so it never waits for the cursor
    row's commit; the row is only where a restart resumes.
    """

    cumulative = True

    def __init__(self) -> None:
        self._cursor: int | None = None

    async def pending(self, store: Store, limit: int) -> list[OutboxEvent]:
        if self._cursor is None:
            self._cursor = int((await store.fetch(sql.published_through()))[0][0])
        return _events(await store.fetch(sql.events_after(self._cursor, limit)))

    def published(self, events: list[OutboxEvent], at: str) -> Execute:
        self._cursor = events[-1].seq
        return sql.advance_published_through(self._cursor)

    def recorded(self, events: list[OutboxEvent]) -> None:
        pass

    def prune(self, before: str, limit: int) -> Execute:
        return sql.prune_published_through(before, limit)

    def count_pending(self) -> Fetch:
        return sql.count_after_cursor()

    def backlog(self) -> Fetch:
        return sql.backlog_after(self._cursor or 0)


class MarkedProgress:
    """Concurrent writers: rows commit out of seq order, so each published row is marked.

    Rows published but not yet marked are skipped, so the next round need not wait for
    the mark's commit. A row is forgotten only by a read that began after its mark
    committed: an earlier read may still see it unmarked.
    """

    cumulative = False

    def __init__(self) -> None:
        self._unmarked: dict[int, float] = {}  # seq -> first read that may forget it
        self._reads = 0

    async def pending(self, store: Store, limit: int) -> list[OutboxEvent]:
        self._reads += 1
        read = self._reads
        rows = await store.fetch(sql.unmarked_events(limit + len(self._unmarked)))
        for seq in [seq for seq, marked_before in self._unmarked.items() if marked_before <= read]:
            del self._unmarked[seq]
        return [event for event in _events(rows) if event.seq not in self._unmarked][:limit]

    def published(self, events: list[OutboxEvent], at: str) -> Execute:
        seqs = [event.seq for event in events]
        self._unmarked.update(dict.fromkeys(seqs, _NOT_YET))
        return sql.mark_published(seqs, at)

    def recorded(self, events: list[OutboxEvent]) -> None:
        # Marked (or failed, leaving the rows to go out again): forgettable by the next read.
        for event in events:
            self._unmarked[event.seq] = self._reads + 1

    def prune(self, before: str, limit: int) -> Execute:
        return sql.prune_marked(before, limit)

    def count_pending(self) -> Fetch:
        return sql.count_unmarked()

    def backlog(self) -> Fetch:
        return sql.unmarked_backlog()


def progress_for(store: Store) -> Progress:
    return CursorProgress() if store.single_writer else MarkedProgress()


def _events(rows: Sequence[Sequence[Any]]) -> list[OutboxEvent]:
    return [
        OutboxEvent(event_id=e, event_type=t, subject=s, payload=p, created_at=c, seq=seq)
        for seq, e, t, s, p, c in rows
    ]


class _Unpublished(Exception):
    """A round's publish failed (already in the outage log)."""


class OutboxRelay:
    """Publishes pending outbox rows; woken after each commit, and polling besides."""

    def __init__(
        self,
        store: Store,
        publisher: Publisher,
        lease: Lease,
        clock: Clock,
        *,
        poll_seconds: float = 0.5,
        retention_seconds: float = 7 * 24 * 3600.0,
        shutdown_seconds: float = 5.0,
        outage_remind_seconds: float = REMIND_SECONDS,
        retry_seconds: tuple[float, float] = (0.2, 5.0),
    ) -> None:
        self._store = store
        self._publisher = publisher
        self._lease = lease
        self._clock = clock
        self._poll_seconds = poll_seconds
        self._retention = timedelta(seconds=retention_seconds)
        self._shutdown_seconds = shutdown_seconds
        self._wakeup = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._retry_seconds = retry_seconds
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._next_prune = 0.0
        self._next_measure = 0.0
        self.progress = progress_for(store)
        self._records: set[asyncio.Future[Any]] = set()
        # A cumulative record not written yet (a later one covers it), and when the next is due.
        self._deferred: tuple[Execute, list[OutboxEvent]] | None = None
        self._record_due = 0.0
        self._outage = OutageLog(clock, outage_remind_seconds)

    def wake(self) -> None:
        self._wakeup.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    async def stop(self) -> None:
        """Give the relay a bounded time to flush what is pending; the rest stays in the outbox."""
        self._stopping = True
        self._stop_requested.set()
        self._wakeup.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, self._shutdown_seconds)
            except TimeoutError:
                logger.warning(
                    "relay did not flush within %.1fs; pending events stay in the outbox",
                    self._shutdown_seconds,
                )
        self._record_deferred()
        if self._records:
            await asyncio.wait(self._records, timeout=self._shutdown_seconds)
        await self._publisher.close()
        await self._lease.release()

    async def _run(self) -> None:
        first_retry, last_retry = self._retry_seconds
        backoff = first_retry
        while True:
            self._wakeup.clear()
            # A stop() during this round still gets one more round for what committed meanwhile.
            final_round = self._stopping
            try:
                leader = await self._lease.held()
                metrics.RELAY_LEADER.set(1 if leader else 0)
                if leader:
                    await self._measure_backlog()
                    while (published := await self.publish_round()) == BATCH:
                        pass
                    if published == 0:
                        self._record_deferred()
                    if self._clock.monotonic() >= self._next_prune:
                        self._next_prune = self._clock.monotonic() + _PRUNE_EVERY_SECONDS
                        await self.prune()
                backoff = first_retry
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                metrics.PUBLISH_FAILURES.inc()
                # A publish failure is the outage log's to report; anything else (the database) is logged here.
                if not isinstance(exc, _Unpublished):
                    logger.warning("relay round failed (%s); retrying in %.1fs", type(exc).__name__, backoff)
                if self._stopping:
                    return
                # Commits do not cut a backoff short (under load they would make it a busy loop); stop() does.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop_requested.wait(), backoff)
                backoff = min(backoff * 2, last_retry)
                continue
            if final_round:
                return
            await asyncio.sleep(_GATHER_SECONDS)
            await self._sleep(self._poll_seconds)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wakeup.wait()

    async def publish_round(self) -> int:
        """Publish up to BATCH pending events; returns how many."""
        events = await self.progress.pending(self._store, BATCH)
        if not events:
            return 0
        try:
            await self._publisher.publish(events)
        except Exception as exc:
            await self._outage.failed(
                str(exc) if isinstance(exc, PublishFailed) else type(exc).__name__, self._pending
            )
            raise _Unpublished from exc
        self._outage.succeeded()
        metrics.PUBLISHED.inc(len(events))
        statement = self.progress.published(events, iso_utc(self._clock.now()))
        if self.progress.cumulative and self._clock.monotonic() < self._record_due:
            self._deferred = (statement, events)
        else:
            self._record(statement, events)
        return len(events)

    def _record(self, statement: Execute, events: list[OutboxEvent]) -> None:
        """Write a record of published events in the background: the next round need not wait for
        its commit (see the progress classes)."""
        self._deferred = None
        self._record_due = self._clock.monotonic() + _RECORD_EVERY_SECONDS
        record = asyncio.ensure_future(self._store.write(StatementJob(statement)))
        self._records.add(record)
        record.add_done_callback(lambda done: self._recorded(done, events))

    def _record_deferred(self) -> None:
        if self._deferred is not None:
            self._record(*self._deferred)

    async def _measure_backlog(self) -> None:
        """The outbox backlog for the metrics, counted at most every few seconds (a count is a scan)."""
        now = self._clock.monotonic()
        if now < self._next_measure:
            return
        self._next_measure = now + _MEASURE_EVERY_SECONDS
        count, oldest = (await self._store.fetch(self.progress.backlog()))[0]
        metrics.OUTBOX_PENDING.set(int(count))
        age = (self._clock.now() - datetime.fromisoformat(oldest)).total_seconds() if oldest else 0.0
        metrics.OUTBOX_OLDEST_SECONDS.set(max(0.0, age))

    async def _pending(self) -> int | None:
        """Events waiting in the outbox, for the outage log (None when the database cannot say)."""
        try:
            return int((await self._store.fetch(self.progress.count_pending()))[0][0])
        except Exception:
            return None

    def _recorded(self, record: asyncio.Future[Any], events: list[OutboxEvent]) -> None:
        self._records.discard(record)
        self.progress.recorded(events)
        # A failed record leaves the events to go out again after a restart: at least once.
        if not record.cancelled() and record.exception() is not None:
            logger.warning("recording published events failed (%s)", type(record.exception()).__name__)

    async def prune(self, chunk: int = PRUNE_CHUNK) -> int:
        """Delete published events past retention, in chunks each of its own commit; returns how many."""
        before = iso_utc(self._clock.now() - self._retention)
        pruned = 0
        # Bounded chunks, so creates are never queued behind a long delete.
        while (count := await self._store.write(StatementJob(self.progress.prune(before, chunk)))) > 0:
            pruned += count
            if count < chunk or self._stopping:
                break
        if pruned:
            logger.info("pruned %d published outbox rows", pruned)
        return int(pruned)
