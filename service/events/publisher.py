"""Where the relay sends events: a small protocol, and Kafka behind it."""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Awaitable, Sequence
from typing import Any, Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from service.events.faults import KafkaFailure, explain, kafka_log_watch
from service.events.kafka import KafkaConnection
from service.events.model import OutboxEvent, kafka_headers

logger = logging.getLogger("service.events")

_TOPIC_ALREADY_EXISTS = 36


class PublishFailed(KafkaFailure):
    """The broker did not acknowledge; the message says why, in words safe to log (never a secret)."""


class Publisher(Protocol):
    async def publish(self, events: Sequence[OutboxEvent]) -> None:
        """Publish in order and return once every event is acknowledged; raise if any is not
        (PublishFailed says why)."""
        ...

    async def close(self) -> None: ...


class KafkaPublisher:
    """An idempotent producer (acks=all) whose every call is bounded, recreated after any failure.

    Records are keyed by the event's subject (the secret id) and sent to partition
    crc32(key) mod partitions, so one secret's events share a partition, in order.
    A failure is raised as PublishFailed naming its cause (aiokafka's own error often
    does not: see service.events.faults).
    """

    def __init__(
        self,
        connection: KafkaConnection,
        topic: str,
        *,
        source: str,
        partitions: int = 6,
        replication_factor: int = 1,
    ) -> None:
        self._connection = connection
        self._topic = topic
        self._source = source
        self._partitions = partitions
        self._replication_factor = replication_factor
        self._producer: AIOKafkaProducer | None = None
        self._topic_ready = False
        kafka_log_watch()  # aiokafka's log kept quiet, its faults kept for explain()

    async def publish(self, events: Sequence[OutboxEvent]) -> None:
        """Publish in order and wait for every acknowledgement; a record batch per partition, not a send per event."""
        attempt = time.monotonic()
        try:
            producer = await self._ready_producer()
            async with asyncio.timeout(self._connection.timeout_seconds):
                partitions = sorted(await producer.partitions_for(self._topic))
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
                        "headers": kafka_headers(event, self._source),
                    }
                    batch = batches.get(partition)
                    if batch is None or batch.append(**record) is None:
                        if batch is not None:
                            futures.append(
                                _retrieved(await producer.send_batch(batch, self._topic, partition=partition))
                            )
                        batch = batches[partition] = producer.create_batch()
                        batch.append(**record)
                for partition, batch in batches.items():
                    futures.append(
                        _retrieved(await producer.send_batch(batch, self._topic, partition=partition))
                    )
                # Not gather: cancelled by the timeout, it would cancel aiokafka's shields around the
                # batches, whose failures (when the producer stops) then go unretrieved.
                await asyncio.wait(futures, return_when=asyncio.FIRST_EXCEPTION)
                for future in futures:
                    future.result()
        except PublishFailed:
            await self.close()
            raise
        except Exception as exc:
            await self.close()
            raise PublishFailed(explain(exc, self._connection, attempt)) from exc
        except BaseException:
            await self.close()
            raise

    async def _ready_producer(self) -> AIOKafkaProducer:
        if not self._topic_ready:
            await self._ensure_topic()
            self._topic_ready = True
        if self._producer is None:
            producer = AIOKafkaProducer(
                **self._connection.client_options(),
                enable_idempotence=True,
                acks="all",
                linger_ms=2,
                client_id="secrets-service",
            )
            try:
                await asyncio.wait_for(producer.start(), self._connection.timeout_seconds)
            except BaseException:
                await bounded(producer.stop(), 5)
                raise
            self._producer = producer
        return self._producer

    async def _ensure_topic(self) -> None:
        admin = AIOKafkaAdminClient(**self._connection.client_options())
        try:
            async with asyncio.timeout(self._connection.timeout_seconds):
                await admin.start()
                response = await admin.create_topics(
                    [
                        NewTopic(
                            self._topic,
                            num_partitions=self._partitions,
                            replication_factor=self._replication_factor,
                            topic_configs={
                                "min.insync.replicas": str(max(1, self._replication_factor - 1)),
                                "cleanup.policy": "delete",
                            },
                        )
                    ]
                )
            for _topic, code, *_ in response.topic_errors:
                if code not in (0, _TOPIC_ALREADY_EXISTS):
                    raise PublishFailed(f"creating topic {self._topic} failed with Kafka error code {code}")
                if code == 0:
                    logger.info("created topic %s", self._topic)
        finally:
            await bounded(admin.close(), 5)

    async def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await bounded(producer.stop(), 5)


def _retrieved(future: asyncio.Future[Any]) -> asyncio.Future[Any]:
    """A send's future whose failure counts as seen even when the publish gave up on it first (asyncio
    would log each such failure as "Future exception was never retrieved", with a stack)."""
    future.add_done_callback(lambda done: done.cancelled() or done.exception())
    return future


async def bounded(awaitable: Awaitable[Any], seconds: float) -> None:
    """Await a Kafka client's close for at most `seconds`; a failure to close is logged, not raised.

    Only at DEBUG: it happens after every failed attempt while the broker is away (a
    producer cannot flush then), and the outage itself is what the log reports.
    """
    try:
        await asyncio.wait_for(awaitable, seconds)
    except Exception as exc:
        logger.debug("Kafka client did not close cleanly: %s", type(exc).__name__)
