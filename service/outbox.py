"""Secret events: written to the outbox with the change, relayed to Kafka after commit.

The relay publishes pending rows in commit order with an idempotent producer, then
marks them published: delivery is at least once, and consumers drop repeats by the
CloudEvents id. Records are keyed by secret id, so one secret's events share a
partition and arrive in order. With several replicas on PostgreSQL only the holder
of an advisory lock relays; when it dies its session ends, the lock frees, and a
standby takes over on its next poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import zlib
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from databases import Database
from databases.core import Connection

from service import ids, repository
from service.repository import OutboxEvent, SecretRecord
from service.settings import Settings
from service.statements import Execute, Plan, Statement

logger = logging.getLogger("service.outbox")

SPECVERSION = "1.0"
_TOPIC_ALREADY_EXISTS = 36
_RELAY_LOCK = 0x5EC7E76
_BATCH = 500
_NOT_YET = float("inf")
_GATHER_SECONDS = 0.02
_PRUNE_CHUNK = 10_000
# An Idempotency-Key answers retries for a day, as clients of such APIs expect.
IDEMPOTENCY_RETENTION = timedelta(hours=24)


def utc_now() -> str:
    """ISO 8601 UTC with milliseconds, as the API returns timestamps."""
    return iso_utc(datetime.now(UTC))


def iso_utc(instant: datetime) -> str:
    """The API's timestamp form: ISO 8601, UTC, milliseconds, Z."""
    return instant.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_event(
    event_type: str, record: SecretRecord, *, api_key_id: str, request_id: str, at: str
) -> OutboxEvent:
    data: dict[str, Any] = {
        **record.to_json(),
        "secretId": record.id,
        "keyId": record.key_id,
        "actor": {"apiKeyId": api_key_id},
        "requestId": request_id,
    }
    del data["id"]
    if event_type == "secret.deleted":
        data["deletedAt"] = at
    return OutboxEvent(
        event_id=ids.uuid7(),
        event_type=event_type,
        subject=record.id,
        payload=orjson.dumps(data).decode(),
        created_at=at,
    )


def kafka_headers(event: OutboxEvent, source: str) -> list[tuple[str, bytes]]:
    return [
        ("ce_specversion", SPECVERSION.encode()),
        ("ce_id", event.event_id.encode()),
        ("ce_source", source.encode()),
        ("ce_type", event.event_type.encode()),
        ("ce_time", event.created_at.encode()),
        ("ce_subject", event.subject.encode()),
        ("content-type", b"application/json"),
    ]


class EventPublisher:
    """An idempotent producer whose every call is bounded, recreated after any failure."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._producer: AIOKafkaProducer | None = None
        self._topic_ready = False

    async def publish(self, events: Sequence[OutboxEvent]) -> None:
        """Publish in order and wait for every acknowledgement; a record batch per partition, not a send per event."""
        topic = self._settings.kafka_topic
        try:
            producer = await self._ready_producer()
            async with asyncio.timeout(self._settings.kafka_timeout_seconds):
                partitions = sorted(await producer.partitions_for(topic))
                batches: dict[int, Any] = {}
                futures = []
                for event in events:
                    key = event.subject.encode()
                    # One secret, one partition: a stable hash of its id (crc32 in C, not murmur2 in Python).
                    partition = partitions[zlib.crc32(key) % len(partitions)]
                    record = {
                        "timestamp": None,
                        "key": key,
                        "value": event.payload.encode(),
                        "headers": kafka_headers(event, self._settings.event_source),
                    }
                    batch = batches.get(partition)
                    if batch is None or batch.append(**record) is None:
                        if batch is not None:
                            futures.append(await producer.send_batch(batch, topic, partition=partition))
                        batch = batches[partition] = producer.create_batch()
                        batch.append(**record)
                for partition, batch in batches.items():
                    futures.append(await producer.send_batch(batch, topic, partition=partition))
                await asyncio.gather(*futures)
        except BaseException:
            await self.close()
            raise

    async def _ready_producer(self) -> AIOKafkaProducer:
        if not self._topic_ready:
            await self._ensure_topic()
            self._topic_ready = True
        if self._producer is None:
            timeout_ms = int(self._settings.kafka_timeout_seconds * 1000)
            producer = AIOKafkaProducer(
                bootstrap_servers=self._settings.kafka_bootstrap_servers,
                enable_idempotence=True,
                acks="all",
                linger_ms=2,
                request_timeout_ms=timeout_ms,
                client_id="secrets-service",
            )
            try:
                await asyncio.wait_for(producer.start(), self._settings.kafka_timeout_seconds)
            except BaseException:
                await _bounded(producer.stop(), 5)
                raise
            self._producer = producer
        return self._producer

    async def _ensure_topic(self) -> None:
        settings = self._settings
        admin = AIOKafkaAdminClient(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            request_timeout_ms=int(settings.kafka_timeout_seconds * 1000),
        )
        try:
            async with asyncio.timeout(settings.kafka_timeout_seconds):
                await admin.start()
                response = await admin.create_topics(
                    [
                        NewTopic(
                            settings.kafka_topic,
                            num_partitions=settings.kafka_topic_partitions,
                            replication_factor=settings.kafka_replication_factor,
                            topic_configs={
                                "min.insync.replicas": str(max(1, settings.kafka_replication_factor - 1)),
                                "cleanup.policy": "delete",
                            },
                        )
                    ]
                )
            for _topic, code, *_ in response.topic_errors:
                if code not in (0, _TOPIC_ALREADY_EXISTS):
                    raise RuntimeError(
                        f"creating topic {settings.kafka_topic!r} failed with error code {code}"
                    )
                if code == 0:
                    logger.info("created topic %s", settings.kafka_topic)
        finally:
            await _bounded(admin.close(), 5)

    async def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await _bounded(producer.stop(), 5)


async def _bounded(awaitable: Any, seconds: float) -> None:
    try:
        await asyncio.wait_for(awaitable, seconds)
    except Exception as exc:
        logger.warning("Kafka client did not close cleanly: %s", type(exc).__name__)


class RelayLease:
    """Who relays: always this process on SQLite; the advisory-lock holder on PostgreSQL."""

    def __init__(self, database: Database) -> None:
        self._database = database
        self._postgres = database.url.dialect == "postgresql"
        self._stack: contextlib.AsyncExitStack | None = None
        self._conn: Connection | None = None

    async def held(self) -> bool:
        if not self._postgres:
            return True
        if self._conn is not None:
            try:
                await asyncio.wait_for(self._conn.fetch_val("SELECT 1"), 5)
                return True
            except Exception:
                logger.warning("relay lease connection lost")
                await self.release()
        try:
            stack = contextlib.AsyncExitStack()
            conn = await stack.enter_async_context(self._database.connection())
            got = await asyncio.wait_for(conn.fetch_val(f"SELECT pg_try_advisory_lock({_RELAY_LOCK})"), 5)
        except Exception as exc:
            logger.warning("relay lease unavailable: %s", type(exc).__name__)
            return False
        if not got:
            await stack.aclose()
            return False
        logger.info("this replica now relays the outbox")
        self._stack, self._conn = stack, conn
        return True

    async def release(self) -> None:
        stack, self._stack, self._conn = self._stack, None, None
        if stack is not None:
            with contextlib.suppress(Exception):
                await stack.aclose()


class OutboxRelay:
    """Publishes pending outbox rows; woken after each commit, and polling besides."""

    def __init__(self, settings: Settings, store: Any, publisher: EventPublisher, lease: RelayLease) -> None:
        self._settings = settings
        self._store = store
        self._publisher = publisher
        self._lease = lease
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._next_prune = 0.0
        self._progress: CursorProgress | MarkedProgress = (
            CursorProgress() if store.database.url.dialect == "sqlite" else MarkedProgress()
        )
        self._marks: set[asyncio.Future[Any]] = set()

    def wake(self) -> None:
        self._wakeup.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    async def stop(self) -> None:
        """Give the relay a bounded time to flush what is pending; the rest stays in the outbox."""
        self._stopping = True
        self._wakeup.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, self._settings.relay_shutdown_seconds)
            except TimeoutError:
                logger.warning(
                    "relay did not flush within %.1fs; pending events stay in the outbox",
                    self._settings.relay_shutdown_seconds,
                )
        if self._marks:
            await asyncio.wait(self._marks, timeout=self._settings.relay_shutdown_seconds)
        await self._publisher.close()
        await self._lease.release()

    async def _run(self) -> None:
        backoff = 0.2
        while True:
            self._wakeup.clear()
            # A stop() during this round still gets one more round for what committed meanwhile.
            final_round = self._stopping
            try:
                if await self._lease.held():
                    while await self._publish_round() == _BATCH:
                        pass
                    await self._maybe_prune()
                backoff = 0.2
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("relay round failed (%s); retrying in %.1fs", type(exc).__name__, backoff)
                if self._stopping:
                    return
                await self._sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            if final_round:
                return
            # Under load a commit lands every few ms; gathering them for a moment makes fewer, fuller rounds.
            await asyncio.sleep(_GATHER_SECONDS)
            await self._sleep(self._settings.outbox_poll_seconds)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), seconds)

    async def _publish_round(self) -> int:
        events = await self._progress.pending(self._store, _BATCH)
        if not events:
            return 0
        await self._publisher.publish(events)
        # Recorded in the background: the next round need not wait for this commit (see the progress classes).
        mark = asyncio.ensure_future(self._store.write(Bookkeeping(self._progress.published(events))))
        self._marks.add(mark)
        mark.add_done_callback(lambda done: self._recorded(done, events))
        return len(events)

    def _recorded(self, mark: asyncio.Future[Any], events: list[OutboxEvent]) -> None:
        self._marks.discard(mark)
        self._progress.recorded(events)
        # A failed record leaves the events to go out again after a restart: at least once.
        if not mark.cancelled() and mark.exception() is not None:
            logger.warning("recording published events failed (%s)", type(mark.exception()).__name__)

    async def _maybe_prune(self) -> None:
        now = time.monotonic()
        if now < self._next_prune:
            return
        self._next_prune = now + 60
        now_utc = datetime.now(UTC)
        before = iso_utc(now_utc - timedelta(seconds=self._settings.outbox_retention_seconds))
        pruned = 0
        # In bounded chunks, each its own commit, so creates are never queued behind a long delete.
        while (chunk := await self._store.write(Bookkeeping(self._progress.prune(before)))) > 0:
            pruned += chunk
            if chunk < _PRUNE_CHUNK or self._stopping:
                break
        await self._store.write(
            Bookkeeping(repository.prune_idempotency_keys(iso_utc(now_utc - IDEMPOTENCY_RETENTION)))
        )
        if pruned:
            logger.info("pruned %d published outbox rows", pruned)


class CursorProgress:
    """SQLite: what is published is one seq, as the single writer commits in seq order.

    The relay reads after its own in-memory cursor, so it never waits for the
    cursor row's commit; the row is only where a restart resumes.
    """

    def __init__(self) -> None:
        self._cursor: int | None = None

    async def pending(self, store: Any, limit: int) -> list[OutboxEvent]:
        if self._cursor is None:
            self._cursor = int((await store.fetch(repository.published_through()))[0][0])
        rows = await store.fetch(repository.events_after(self._cursor, limit))
        return _events(orjson.loads(rows[0][0]))

    def published(self, events: list[OutboxEvent]) -> Execute:
        self._cursor = events[-1].seq
        return repository.advance_published_through(self._cursor)

    def recorded(self, events: list[OutboxEvent]) -> None:
        pass

    def prune(self, before: str) -> Execute:
        return repository.prune_published_through(before, _PRUNE_CHUNK)


class MarkedProgress:
    """PostgreSQL: replicas commit out of seq order, so each published row is marked.

    Rows published but not yet marked are skipped, so the next round need not wait for
    the mark's commit. A row is forgotten only by a read that began after its mark
    committed: an earlier read may still see it unmarked.
    """

    def __init__(self) -> None:
        self._unmarked: dict[int, float] = {}  # seq -> first read that may forget it
        self._reads = 0

    async def pending(self, store: Any, limit: int) -> list[OutboxEvent]:
        self._reads += 1
        read = self._reads
        rows = await store.fetch(repository.unmarked_events(limit + len(self._unmarked)))
        for seq in [seq for seq, marked_before in self._unmarked.items() if marked_before <= read]:
            del self._unmarked[seq]
        return [event for event in _events(rows) if event.seq not in self._unmarked][:limit]

    def published(self, events: list[OutboxEvent]) -> Execute:
        seqs = [event.seq for event in events]
        self._unmarked.update(dict.fromkeys(seqs, _NOT_YET))
        return repository.mark_published(seqs, utc_now())

    def recorded(self, events: list[OutboxEvent]) -> None:
        # Marked (or failed, leaving the rows to go out again: at least once): forgettable by the next read.
        for event in events:
            self._unmarked[event.seq] = self._reads + 1

    def prune(self, before: str) -> Execute:
        return repository.prune_marked(before, _PRUNE_CHUNK)


def _events(rows: Sequence[Sequence[Any]]) -> list[OutboxEvent]:
    return [
        OutboxEvent(event_id=e, event_type=t, subject=s, payload=p, created_at=c, seq=seq)
        for seq, e, t, s, p, c in rows
    ]


class Bookkeeping:
    """One of the relay's own statements (record what is published, prune), committed with the next batch.

    Its outcome is the statement's result (rows changed, for an Execute).
    """

    writes_events = False

    def __init__(self, statement: Statement) -> None:
        self.statement = statement

    @classmethod
    def plan_batch(cls, jobs: Sequence[Bookkeeping], dialect: str) -> Plan[list[Any]]:
        results = []
        for job in jobs:
            results.append((yield job.statement))
        return results
