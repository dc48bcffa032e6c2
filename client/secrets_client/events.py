"""The typed event consumer: `secret.*` CloudEvents (Kafka binary mode) as dataclasses.

    async with SecretEvents(KafkaSettings.from_env(), group_id="my-app") as events:
        async for event in events:          # SecretCreated | SecretUpdated | SecretDeleted | SecretAccessed
            await handle(event)

* Records whose `ce_specversion` is not 1.0, or that are not a well-formed event of a known
  shape, are logged (by partition and offset, never by content), counted in `stats` and
  skipped: the loop goes on. Events of types it does not know are counted and skipped too.
* Repeats of an event (same `ce_source` and `ce_id`: delivery is at least once) are dropped.
* In a consumer group, offsets are committed only for events whose handling has returned:
  an event counts as handled when the loop asks for the next one (or `batches()` for the
  next batch), or when the `async with` block ends without an exception. A crash re-reads,
  never skips.
* With `group_id=None` the reader takes every partition of the topic and commits nothing
  (the sync agent reads this way); it starts at the end of the topic unless `from_beginning`.

Needs the `events` extra (aiokafka).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import CommitFailedError, KafkaError

from secrets_client.kafka import KafkaSettings

logger = logging.getLogger("secrets_client.events")

SPECVERSION = "1.0"


class MalformedRecord(Exception):
    """A record that is not a well-formed secret event; `reason` never quotes the record's content."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True, kw_only=True)
class SecretEvent:
    """What every event has: its CloudEvents attributes, where it was read, and its raw data."""

    type: ClassVar[str] = ""
    id: str
    source: str
    time: datetime
    subject: str
    partition: int
    offset: int
    secret_id: str
    project_id: str
    name: str
    version: int
    actor_api_key_id: str
    request_id: str
    data: Mapping[str, Any] = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class SecretChange(SecretEvent):
    """A new version, or the end of a secret: its metadata, never its value."""

    created_at: datetime
    updated_at: datetime
    key_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SecretCreated(SecretChange):
    type: ClassVar[str] = "secret.created"


@dataclass(frozen=True, slots=True, kw_only=True)
class SecretUpdated(SecretChange):
    type: ClassVar[str] = "secret.updated"
    restored_from: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SecretDeleted(SecretChange):
    type: ClassVar[str] = "secret.deleted"
    deleted_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class SecretAccessed(SecretEvent):
    """A version of the value was read (audit)."""

    type: ClassVar[str] = "secret.accessed"
    accessed_at: datetime


AnyEvent = SecretCreated | SecretUpdated | SecretDeleted | SecretAccessed
EVENT_TYPES: dict[str, type[AnyEvent]] = {
    kind.type: kind for kind in (SecretCreated, SecretUpdated, SecretDeleted, SecretAccessed)
}


def _text(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise MalformedRecord(f"field {key} is missing or not a non-empty string")
    return value


def _integer(data: Mapping[str, Any], key: str, optional: bool = False) -> int | None:
    value = data.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise MalformedRecord(f"field {key} is missing or not a positive integer")
    return value


def _time(text: str, what: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise MalformedRecord(f"{what} is not an ISO 8601 time") from None


def parse_record(record: Any) -> AnyEvent | None:
    """The event a Kafka record carries; None for a well-formed event of a type this client does not know.

    Raises MalformedRecord for anything else."""
    headers: dict[str, str] = {}
    for name, raw in record.headers or ():
        try:
            headers.setdefault(name, raw.decode("utf-8") if raw is not None else "")
        except (UnicodeDecodeError, AttributeError):
            raise MalformedRecord(f"header {name} is not UTF-8") from None
    if "ce_specversion" not in headers:
        raise MalformedRecord("no ce_specversion header: not a CloudEvent in binary mode")
    if headers["ce_specversion"] != SPECVERSION:
        raise MalformedRecord("unsupported ce_specversion (this client reads 1.0)")
    for name in ("ce_id", "ce_source", "ce_type"):
        if not headers.get(name):
            raise MalformedRecord(f"no {name} header")
    content_type = headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise MalformedRecord("content-type is not application/json")
    kind = EVENT_TYPES.get(headers["ce_type"])
    if kind is None:
        return None
    try:
        data = json.loads(record.value)
    except (TypeError, ValueError):
        raise MalformedRecord("value is not JSON") from None
    if not isinstance(data, dict):
        raise MalformedRecord("value is not a JSON object")
    actor = data.get("actor")
    if not isinstance(actor, dict):
        raise MalformedRecord("field actor is missing or not an object")
    common: dict[str, Any] = {
        "id": headers["ce_id"],
        "source": headers["ce_source"],
        "time": _time(headers["ce_time"], "ce_time") if headers.get("ce_time") else None,
        "subject": headers.get("ce_subject") or _text(data, "secretId"),
        "partition": record.partition,
        "offset": record.offset,
        "secret_id": _text(data, "secretId"),
        "project_id": _text(data, "projectId"),
        "name": _text(data, "name"),
        "version": _integer(data, "version"),
        "actor_api_key_id": _text(actor, "apiKeyId"),
        "request_id": _text(data, "requestId"),
        "data": data,
    }
    if kind is SecretAccessed:
        accessed_at = _time(_text(data, "accessedAt"), "field accessedAt")
        if common["time"] is None:
            common["time"] = accessed_at
        return SecretAccessed(**common, accessed_at=accessed_at)
    change = {
        **common,
        "created_at": _time(_text(data, "createdAt"), "field createdAt"),
        "updated_at": _time(_text(data, "updatedAt"), "field updatedAt"),
        "key_id": _text(data, "keyId"),
    }
    if change["time"] is None:
        change["time"] = change["updated_at"]
    if kind is SecretUpdated:
        return SecretUpdated(**change, restored_from=_integer(data, "restoredFrom", optional=True))
    if kind is SecretDeleted:
        return SecretDeleted(**change, deleted_at=_time(_text(data, "deletedAt"), "field deletedAt"))
    return SecretCreated(**change)


@dataclass
class Stats:
    """What a reader has seen: events handed out, and records it skipped, by why."""

    events: int = 0
    repeats: int = 0
    malformed: int = 0
    unknown_types: int = 0


class _Seen:
    """(ce_source, ce_id) pairs already handed out: the last `remember` of them, or all when None."""

    def __init__(self, remember: int | None, initial: Iterable[tuple[str, str]]) -> None:
        self._remember = remember
        self._keys: OrderedDict[tuple[str, str], None] = OrderedDict()
        for key in initial:
            self.add(key)

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self._keys

    def add(self, key: tuple[str, str]) -> None:
        self._keys[key] = None
        if self._remember is not None and len(self._keys) > self._remember:
            self._keys.popitem(last=False)


class SecretEvents:
    """A reader of the secret events on a topic (see the module's docstring)."""

    def __init__(
        self,
        kafka: KafkaSettings | str,
        topic: str | None = None,
        group_id: str | None = None,
        *,
        from_beginning: bool = True,
        remember: int | None = 100_000,
        seen: Iterable[tuple[str, str]] = (),
        max_records: int = 500,
        poll_seconds: float = 1.0,
        start_timeout: float = 30.0,
        partition_refresh_seconds: float = 10.0,
        **consumer_options: Any,
    ) -> None:
        self.settings = KafkaSettings(bootstrap_servers=kafka) if isinstance(kafka, str) else kafka
        self.topic = topic or self.settings.topic
        self.group_id = group_id
        self.stats = Stats()
        self._from_beginning = from_beginning
        self._seen = _Seen(remember, seen)
        self._max_records = max_records
        self._poll_ms = int(poll_seconds * 1000)
        self._start_timeout = start_timeout
        self._refresh_seconds = partition_refresh_seconds
        self._options = {**self.settings.client_options(), **consumer_options}
        self._consumer: AIOKafkaConsumer | None = None
        self._admin: AIOKafkaAdminClient | None = None  # group-less: where the topic's partitions are learnt
        self._handled: dict[TopicPartition, int] = {}  # next offset to commit, per partition
        self._handed_out: dict[TopicPartition, int] = {}  # positions of what the caller holds now
        self._next_refresh = 0.0

    def __repr__(self) -> str:
        return f"SecretEvents(topic={self.topic!r}, group_id={self.group_id!r}, kafka={self.settings.for_logs!r})"

    async def __aenter__(self) -> SecretEvents:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is None:
            self._confirm()
        await self.stop()

    async def start(self) -> None:
        """Connect (bounded by start_timeout) and take the topic's partitions, or join the group."""
        offset_reset = "earliest" if self._from_beginning or self.group_id is not None else "latest"
        consumer = AIOKafkaConsumer(
            *([self.topic] if self.group_id is not None else []),
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset=offset_reset,
            **self._options,
        )
        admin = AIOKafkaAdminClient(**self.settings.client_options()) if self.group_id is None else None
        try:
            async with asyncio.timeout(self._start_timeout):
                await consumer.start()
                if admin is not None:
                    await admin.start()
                    await self._assign(consumer, admin, at_end=not self._from_beginning)
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(consumer.stop(), 10)
            if admin is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(admin.close(), 10)
            raise
        self._consumer, self._admin = consumer, admin
        self._next_refresh = asyncio.get_running_loop().time() + self._refresh_seconds

    async def _assign(self, consumer: AIOKafkaConsumer, admin: AIOKafkaAdminClient, at_end: bool) -> None:
        """Take every partition of the topic; known ones keep their position, new ones start at the beginning."""
        (described,) = await admin.describe_topics([self.topic])
        numbers = [p["partition"] for p in described["partitions"]] if described["error_code"] == 0 else []
        partitions = {TopicPartition(self.topic, p) for p in numbers}
        current = consumer.assignment()
        if partitions == current:
            return
        positions = {tp: await consumer.position(tp) for tp in current & partitions}
        consumer.assign(sorted(partitions))
        for tp, offset in positions.items():
            consumer.seek(tp, offset)
        new = sorted(partitions - current)
        if new and at_end:
            await consumer.seek_to_end(*new)
        elif new:
            await consumer.seek_to_beginning(*new)
        if new:
            logger.info(
                "reading %d partition(s) of %s from the %s",
                len(new),
                self.topic,
                "end" if at_end else "beginning",
            )

    async def stop(self) -> None:
        """Commit what was handled, and disconnect (each bounded)."""
        consumer, self._consumer = self._consumer, None
        admin, self._admin = self._admin, None
        if consumer is None:
            return
        try:
            await self._commit(consumer)
        finally:
            for close in (consumer.stop, *([admin.close] if admin is not None else [])):
                try:
                    await asyncio.wait_for(close(), 10)
                except Exception as exc:
                    logger.warning("a Kafka client did not close cleanly: %s", type(exc).__name__)

    def __aiter__(self) -> AsyncIterator[AnyEvent]:
        return self._events()

    async def _events(self) -> AsyncIterator[AnyEvent]:
        async for batch in self._raw_batches():
            for tp, offset, event in batch:
                if event is not None:
                    self._handed_out = {tp: offset + 1}
                    yield event
                    self._handed_out = {}
                self._handled[tp] = offset + 1

    async def batches(self) -> AsyncIterator[list[AnyEvent]]:
        """The events in batches as they arrive; an empty batch after `poll_seconds` without any."""
        async for batch in self._raw_batches():
            positions = {tp: offset + 1 for tp, offset, _ in batch}
            self._handed_out = positions
            yield [event for _, _, event in batch if event is not None]
            self._handed_out = {}
            self._handled.update(positions)

    def _confirm(self) -> None:
        """The caller returned from what it was last handed: it counts as handled."""
        self._handled.update(self._handed_out)
        self._handed_out = {}

    async def _raw_batches(self) -> AsyncIterator[list[tuple[TopicPartition, int, AnyEvent | None]]]:
        while True:
            consumer = self._consumer
            if consumer is None:
                raise RuntimeError("SecretEvents is not started (use `async with`)")
            await self._commit(consumer)
            if self._admin is not None:
                await self._refresh(consumer, self._admin)
            if not consumer.assignment() and self.group_id is None:
                # No partitions yet (the topic does not exist): getmany would wait for an assignment.
                await asyncio.sleep(self._poll_ms / 1000)
                yield []
                continue
            fetched = await consumer.getmany(timeout_ms=self._poll_ms, max_records=self._max_records)
            batch = []
            for tp, records in sorted(fetched.items()):
                for record in records:
                    batch.append((tp, record.offset, self._event(record)))
            yield batch

    async def _refresh(self, consumer: AIOKafkaConsumer, admin: AIOKafkaAdminClient) -> None:
        loop = asyncio.get_running_loop()
        # Without partitions (no topic yet) look at every poll: the first events are waiting.
        if loop.time() < self._next_refresh and consumer.assignment():
            return
        self._next_refresh = loop.time() + self._refresh_seconds
        try:
            async with asyncio.timeout(self._start_timeout):
                # Partitions that appear later (a topic created after start) hold only newer events.
                await self._assign(consumer, admin, at_end=False)
        except (KafkaError, TimeoutError) as exc:
            logger.info("could not refresh the partitions of %s: %s", self.topic, type(exc).__name__)

    def _event(self, record: Any) -> AnyEvent | None:
        try:
            event = parse_record(record)
        except MalformedRecord as exc:
            self.stats.malformed += 1
            logger.warning(
                "skipped a malformed record (%s partition %d offset %d): %s",
                record.topic,
                record.partition,
                record.offset,
                exc.reason,
            )
            return None
        if event is None:
            self.stats.unknown_types += 1
            return None
        key = (event.source, event.id)
        if key in self._seen:
            self.stats.repeats += 1
            return None
        self._seen.add(key)
        self.stats.events += 1
        return event

    async def _commit(self, consumer: AIOKafkaConsumer) -> None:
        if self.group_id is None or not self._handled:
            return
        offsets, self._handled = self._handled, {}
        try:
            await asyncio.wait_for(consumer.commit(offsets), 30)
        except CommitFailedError:
            # The group rebalanced: another member (or this one, again) re-reads these events.
            logger.warning("offsets not committed: the consumer group rebalanced")
        except (KafkaError, TimeoutError) as exc:
            logger.warning("offsets not committed yet: %s", type(exc).__name__)
            for tp, offset in offsets.items():
                self._handled[tp] = max(offset, self._handled.get(tp, 0))
