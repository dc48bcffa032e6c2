"""The typed consumer on the real broker: records the service publishes, hand-made malformed ones,
repeats, and offsets committed only after handling."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Sequence
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from secrets_client.events import (
    SecretAccessed,
    SecretCreated,
    SecretDeleted,
    SecretEvents,
    SecretUpdated,
    parse_record,
)

from service.settings import Settings
from tests.support.app import auth, created, make_env, make_project, serving
from tests.support.database import pending_events
from tests.support.leaks import CANARY, leaked
from tests.support.waiting import poll_until

pytestmark = pytest.mark.kafka

Header = tuple[str, bytes]


def headers(
    event_type: str = "secret.created", event_id: str | None = None, **overrides: str | None
) -> list[Header]:
    values: dict[str, str | None] = {
        "ce_specversion": "1.0",
        "ce_id": event_id or str(uuid.uuid4()),
        "ce_source": "test",
        "ce_type": event_type,
        "ce_time": "2030-01-01T00:00:00.000Z",
        "ce_subject": "s-1",
        "content-type": "application/json",
        **overrides,
    }
    return [(name, value.encode()) for name, value in values.items() if value is not None]


def payload(**overrides: Any) -> bytes:
    data = {
        "secretId": "s-1",
        "projectId": "project_1",
        "name": "HAND_MADE",
        "createdAt": "2030-01-01T00:00:00.000Z",
        "updatedAt": "2030-01-01T00:00:00.000Z",
        "version": 1,
        "keyId": "k1",
        "actor": {"apiKeyId": "key-1"},
        "requestId": "r-1",
        **overrides,
    }
    return json.dumps({k: v for k, v in data.items() if v is not None}).encode()


async def produce(bootstrap: str, topic: str, records: Sequence[tuple[bytes | None, list[Header]]]) -> None:
    """Records onto partition 0 of the topic (created with one partition), in order."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    async with asyncio.timeout(30):
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
        except Exception as exc:  # already there
            assert "TopicAlreadyExists" in type(exc).__name__, type(exc).__name__
        finally:
            await admin.close()
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, request_timeout_ms=10000)
        await producer.start()
        try:
            for value, record_headers in records:
                await producer.send_and_wait(topic, value, key=b"s-1", partition=0, headers=record_headers)
        finally:
            await producer.stop()


async def take(events: SecretEvents, count: int, timeout: float = 30) -> list[Any]:
    """The next `count` events (fails after `timeout`)."""
    taken: list[Any] = []
    async with asyncio.timeout(timeout):
        async for event in events:
            taken.append(event)
            if len(taken) == count:
                break
    return taken


async def nothing_more(events: SecretEvents, seconds: float = 3) -> list[Any]:
    """Whatever arrives within `seconds` (expected: nothing)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    found: list[Any] = []
    async for batch in events.batches():
        found.extend(batch)
        if loop.time() > deadline:
            break
    return found


def a_topic() -> str:
    return "test-client-" + uuid.uuid4().hex[:10]


async def test_the_consumer_reads_what_the_service_publishes(database_url: str, kafka_bootstrap: str) -> None:
    settings = Settings.from_env(
        make_env(database_url, KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap, OUTBOX_POLL_SECONDS="0.1")
    )
    project = await make_project(settings, "consumer")
    async with serving(settings) as http:
        secret = await created(http, project, "CONSUMED", CANARY)
        path = f"/api/secrets/{secret['id']}"
        assert (await http.put(path, json={"value": CANARY + "2"}, headers=auth(project))).status_code == 200
        assert (await http.post(f"{path}/versions/1/restore", headers=auth(project))).status_code == 200
        assert (await http.get(f"{path}/value", headers=auth(project))).status_code == 200
        assert (await http.delete(path, headers=auth(project))).status_code == 200
        await poll_until(lambda: _drained(settings), 60, what="the outbox to drain")

    async with SecretEvents(kafka_bootstrap, settings.kafka_topic, f"g-{uuid.uuid4()}") as events:
        received = await take(events, 5)
    assert [type(e) for e in received] == [
        SecretCreated,
        SecretUpdated,
        SecretUpdated,
        SecretAccessed,
        SecretDeleted,
    ]
    assert [e.version for e in received] == [1, 2, 3, 3, 3]
    assert {e.secret_id for e in received} == {secret["id"]}
    assert {e.subject for e in received} == {secret["id"]}
    assert {e.project_id for e in received} == {project["projectId"]}
    assert {e.actor_api_key_id for e in received} == {project["apiKeyId"]}
    assert {e.source for e in received} == {settings.event_source}
    first, _, restored, accessed, deleted = received
    assert isinstance(first, SecretCreated) and first.name == "CONSUMED" and first.key_id == "test1"
    assert isinstance(restored, SecretUpdated) and restored.restored_from == 1
    assert isinstance(accessed, SecretAccessed) and accessed.accessed_at.tzinfo is not None
    assert isinstance(deleted, SecretDeleted) and deleted.deleted_at >= first.created_at
    assert not leaked(CANARY, *(repr(e) for e in received))


async def _drained(settings: Settings) -> bool:
    return await pending_events(settings) == 0


async def test_malformed_records_are_logged_counted_and_skipped(
    kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The client's own loggers (aiokafka's DEBUG lines dump raw records: the agent caps them at INFO).
    caplog.set_level(logging.DEBUG, logger="secrets_client")
    topic = a_topic()
    canary = CANARY.encode()
    await produce(
        kafka_bootstrap,
        topic,
        [
            (payload(name="FIRST"), headers()),
            (b"not json " + canary, headers()),
            (payload(), headers(ce_specversion="0.3")),
            (payload(), headers(ce_id=None)),
            (json.dumps([CANARY]).encode(), headers()),
            (payload(version="three"), headers()),
            (payload(), [*headers(ce_subject=None), ("ce_subject", b"\xff\xfe" + canary)]),
            (payload(), headers(ce_specversion=None)),
            (payload(), headers("secret.renamed")),
            (payload(name="LAST", restoredFrom=1), headers("secret.updated")),
        ],
    )
    async with SecretEvents(kafka_bootstrap, topic, f"g-{uuid.uuid4()}") as events:
        received = await take(events, 2)
        assert await nothing_more(events, 2) == []
    assert [(type(e), e.name) for e in received] == [(SecretCreated, "FIRST"), (SecretUpdated, "LAST")]
    assert events.stats.malformed == 7
    assert events.stats.unknown_types == 1
    ours = [r for r in caplog.records if r.name.startswith("secrets_client")]
    skipped = [r for r in ours if "malformed" in r.getMessage()]
    assert len(skipped) == 7
    assert all(f"{topic} partition 0 offset" in r.getMessage() for r in skipped)
    assert not leaked(CANARY, *(r.getMessage() for r in ours)), "a skipped record's content was logged"


async def test_repeats_are_dropped_by_source_and_id(kafka_bootstrap: str) -> None:
    topic = a_topic()
    event_id = str(uuid.uuid4())
    await produce(
        kafka_bootstrap,
        topic,
        [
            (payload(name="ONE"), headers(event_id=event_id)),
            (payload(name="ONE"), headers(event_id=event_id)),  # a repeat
            (payload(name="OTHER_SOURCE"), headers(event_id=event_id, ce_source="elsewhere")),
            (payload(name="TWO"), headers()),
        ],
    )
    async with SecretEvents(kafka_bootstrap, topic, f"g-{uuid.uuid4()}") as events:
        received = await take(events, 3)
        assert await nothing_more(events, 2) == []
    assert [e.name for e in received] == ["ONE", "OTHER_SOURCE", "TWO"]
    assert events.stats.repeats == 1


async def test_offsets_are_committed_only_for_events_whose_handling_returned(kafka_bootstrap: str) -> None:
    topic = a_topic()
    group = f"g-{uuid.uuid4()}"
    await produce(kafka_bootstrap, topic, [(payload(name=f"E{i}"), headers()) for i in range(4)])

    class HandlerFailed(Exception):
        pass

    handled = []
    with pytest.raises(HandlerFailed):
        async with SecretEvents(kafka_bootstrap, topic, group) as events:
            async for event in events:
                if event.name == "E1":
                    raise HandlerFailed  # E1's handling never returned
                handled.append(event.name)
    assert handled == ["E0"]

    # The group goes on from E1: E0 was committed, E1 was not.
    async with SecretEvents(kafka_bootstrap, topic, group) as events:
        again = await take(events, 2)
        # The block ends cleanly after E2: E2 counts as handled, E3 was never handed out.
    assert [e.name for e in again] == ["E1", "E2"]

    async with SecretEvents(kafka_bootstrap, topic, group) as events:
        rest = await take(events, 1)
        assert await nothing_more(events, 2) == []
    assert [e.name for e in rest] == ["E3"]


async def test_a_groupless_reader_starts_at_the_end_and_finds_a_topic_created_later(
    kafka_bootstrap: str,
) -> None:
    topic = a_topic()
    await produce(kafka_bootstrap, topic, [(payload(name="BEFORE"), headers())])
    async with SecretEvents(kafka_bootstrap, topic, None, from_beginning=False) as events:
        await produce(kafka_bootstrap, topic, [(payload(name="AFTER"), headers())])
        assert [e.name for e in await take(events, 1)] == ["AFTER"]

    later = a_topic()
    async with SecretEvents(
        kafka_bootstrap, later, None, from_beginning=False, partition_refresh_seconds=0.5
    ) as events:
        await produce(kafka_bootstrap, later, [(payload(name="FIRST_EVER"), headers())])
        # The topic did not exist at start: everything on it is newer than the reader.
        assert [e.name for e in await take(events, 1)] == ["FIRST_EVER"]


def test_parse_record_refuses_what_is_not_an_event() -> None:
    class Record:
        topic, partition, offset = "t", 0, 0

        def __init__(self, value: bytes, record_headers: list[Header]) -> None:
            self.value = value
            self.headers = record_headers

    event = parse_record(Record(payload(), headers()))
    assert isinstance(event, SecretCreated) and event.version == 1
    from secrets_client.events import MalformedRecord

    for value, record_headers in [
        (payload(actor="me"), headers()),
        (payload(createdAt="yesterday"), headers()),
        (payload(version=0), headers()),
        (payload(version=True), headers()),
        (payload(), headers(**{"content-type": "text/plain"})),
        (payload(deletedAt=None), headers("secret.deleted")),
    ]:
        with pytest.raises(MalformedRecord):
            parse_record(Record(value, record_headers))
