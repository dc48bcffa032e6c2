"""secret.* events on a real Kafka broker, as their consumers see them.

The app runs in process (its lifespan starts the outbox relay); the broker is the
project's scripts/kafka-local. Every check reads the topic itself: record keys,
CloudEvents headers and JSON values.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.app import kafka_publisher
from service.events.model import OutboxEvent
from service.events.publisher import Publisher
from service.settings import Settings
from tests.support import database
from tests.support.app import auth, make_env, make_project, serving
from tests.support.kafka import LocalBroker, record_headers, topic_snapshot, wait_for_records
from tests.support.leaks import CANARY, leaked
from tests.support.waiting import poll_until

pytestmark = pytest.mark.kafka

CE_HEADERS = {
    "ce_specversion",
    "ce_id",
    "ce_source",
    "ce_type",
    "ce_time",
    "ce_subject",
    "ce_partitionkey",
    "content-type",
}
EVENT_FIELDS = {
    "secretId",
    "projectId",
    "name",
    "createdAt",
    "updatedAt",
    "version",
    "keyId",
    "actor",
    "requestId",
}


class App:
    """The in-process service: an HTTP client over it, its settings and one project with an API key."""

    def __init__(self, http: httpx.AsyncClient, settings: Settings, project: dict[str, str]) -> None:
        self.http = http
        self.settings = settings
        self.project = project

    async def create(self, name: str, value: str = "v", **headers: str) -> httpx.Response:
        return await self.http.post(
            "/api/secrets", json={"name": name, "value": value}, headers={**auth(self.project), **headers}
        )

    async def pending_events(self) -> int:
        """Outbox rows not yet published (read straight from the database)."""
        return await database.pending_events(self.settings)

    async def drained(self, timeout: float = 60) -> None:
        """Wait until the relay has published (and the broker acknowledged) every committed event."""
        await poll_until(self._is_drained, timeout, what="the outbox to drain")

    async def _is_drained(self) -> bool:
        return await self.pending_events() == 0


AppFactory = Callable[..., AbstractAsyncContextManager[App]]


@pytest.fixture
def start_app(database_url: str) -> AppFactory:
    """Start the app (lifespan included) against a given broker; one project per app."""

    @asynccontextmanager
    async def start(bootstrap: str, publisher: Any = None, **overrides: str) -> AsyncIterator[App]:
        env = make_env(
            database_url, KAFKA_BOOTSTRAP_SERVERS=bootstrap, OUTBOX_POLL_SECONDS="0.1", **overrides
        )
        settings = Settings.from_env(env)
        project = await make_project(settings, "events")
        options = {} if publisher is None else {"publisher": publisher(settings)}
        async with serving(settings, **options) as http:
            yield App(http, settings, project)

    return start


@pytest.fixture
async def private_broker(tmp_path: Path) -> AsyncIterator[LocalBroker]:
    """A broker of this test's own, not started; stopped at teardown whatever happened."""
    broker = LocalBroker(tmp_path / "kafka")
    try:
        yield broker
    finally:
        await broker.astop()


def events_of(records: list[Any], event_type: str | None = None) -> list[Any]:
    return [r for r in records if event_type is None or record_headers(r).get("ce_type") == event_type]


def data(record: Any) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(record.value)
    return value


def assert_no_leak(records: list[Any], *secrets: str) -> None:
    for record in records:
        blobs = [record.key or b"", record.value or b""]
        for name, value in record.headers or []:
            blobs += [name.encode(), value]
        for i, secret in enumerate(secrets):
            assert not leaked(secret, *blobs), (
                f"secret #{i} (or its hex/base64) is in record {record.partition}/{record.offset}"
            )


async def test_n_creates_give_n_cloudevents_without_the_value(
    start_app: AppFactory, kafka_bootstrap: str
) -> None:
    n = 20
    async with start_app(
        kafka_bootstrap, EVENT_SOURCE="urn:test:secrets-service", KAFKA_TOPIC_PARTITIONS="3"
    ) as app:
        values = [CANARY if i == 7 else f"plain-value-{i}" for i in range(n)]
        request_ids = [f"req-{uuid.uuid4().hex}" for _ in range(n)]
        responses = await asyncio.gather(
            *(app.create(f"SECRET_{i}", values[i], **{"X-Request-ID": request_ids[i]}) for i in range(n))
        )
        assert [r.status_code for r in responses] == [201] * n
        created = {r.json()["id"]: (r.json(), request_ids[i]) for i, r in enumerate(responses)}
        await app.drained()
        # Everything is acknowledged by the broker now: the topic is complete.
        records = await topic_snapshot(kafka_bootstrap, app.settings.kafka_topic)

    assert len(records) == n, f"expected exactly {n} records, found {len(records)}"
    # The service created the topic with the configured partition count.
    assert {r.partition for r in records} <= {0, 1, 2}
    assert_no_leak(records, CANARY)
    ids = []
    for record in records:
        header_names = [name for name, _ in record.headers]
        assert sorted(header_names) == sorted(CE_HEADERS), header_names
        headers = record_headers(record)
        assert headers["ce_specversion"] == "1.0"
        assert headers["ce_type"] == "secret.created"
        assert headers["ce_source"] == "urn:test:secrets-service"
        assert headers["content-type"] == "application/json"
        assert uuid.UUID(headers["ce_id"]).version == 7, "ce_id is a time-ordered UUID"
        ids.append(headers["ce_id"])
        assert datetime.fromisoformat(headers["ce_time"]).tzinfo is not None, headers["ce_time"]

        secret_id = headers["ce_subject"]
        assert secret_id in created, "event for a secret the API did not create"
        assert record.key == secret_id.encode()
        assert headers["ce_partitionkey"] == secret_id, "the partitionkey extension is the record key"
        body, request_id = created[secret_id]
        event = data(record)
        assert set(event) == EVENT_FIELDS, sorted(event)
        assert event["secretId"] == secret_id
        assert event["projectId"] == app.project["projectId"] == body["projectId"]
        assert event["name"] == body["name"]
        assert event["createdAt"] == body["createdAt"]
        assert event["updatedAt"] == body["updatedAt"]
        assert event["keyId"] == "test1"
        assert event["version"] == 1
        assert event["actor"] == {"apiKeyId": app.project["apiKeyId"]}
        assert event["requestId"] == request_id
    assert len(set(ids)) == n, "ce_id values are not unique"
    assert {r.key.decode() for r in records} == set(created)


async def test_rejected_duplicate_emits_nothing(start_app: AppFactory, kafka_bootstrap: str) -> None:
    async with start_app(kafka_bootstrap) as app:
        first = await app.create("DUPLICATE", "first")
        assert first.status_code == 201
        second = await app.create("DUPLICATE", "second")
        assert second.status_code == 409
        # Several racing duplicates go through one group commit: they must not emit either.
        racing = await asyncio.gather(*(app.create("RACED", f"v{i}") for i in range(8)))
        assert sorted(r.status_code for r in racing) == [201] + [409] * 7
        await app.drained()
        records = await topic_snapshot(kafka_bootstrap, app.settings.kafka_topic)

    by_name: dict[str, list[Any]] = {}
    for record in records:
        by_name.setdefault(data(record)["name"], []).append(record)
    assert sorted(by_name) == ["DUPLICATE", "RACED"]
    assert len(by_name["DUPLICATE"]) == 1
    assert len(by_name["RACED"]) == 1
    assert record_headers(by_name["DUPLICATE"][0])["ce_subject"] == first.json()["id"]
    winner = next(r for r in racing if r.status_code == 201)
    assert record_headers(by_name["RACED"][0])["ce_subject"] == winner.json()["id"]


async def test_idempotent_retry_emits_one_event(start_app: AppFactory, kafka_bootstrap: str) -> None:
    async with start_app(kafka_bootstrap) as app:
        key = {"Idempotency-Key": f"retry-{uuid.uuid4().hex}"}
        first = await app.create("RETRIED", "v", **key)
        assert first.status_code == 201
        # The client retries (sequentially, then several at once): same answer, no new event.
        again = [await app.create("RETRIED", "v", **key)]
        again += await asyncio.gather(*(app.create("RETRIED", "v", **key) for _ in range(4)))
        assert [r.status_code for r in again] == [201] * 5
        assert {r.json()["id"] for r in again} == {first.json()["id"]}
        await app.drained()
        records = await topic_snapshot(kafka_bootstrap, app.settings.kafka_topic)

    assert len(records) == 1
    assert record_headers(records[0])["ce_subject"] == first.json()["id"]


async def test_creates_refused_by_the_quota_emit_nothing(start_app: AppFactory, kafka_bootstrap: str) -> None:
    async with start_app(kafka_bootstrap, MAX_SECRETS_PER_PROJECT="3") as app:
        responses = await asyncio.gather(*(app.create(f"QUOTA_{i}", "v") for i in range(8)))
        assert sorted(r.status_code for r in responses) == [201] * 3 + [422] * 5
        await app.drained()
        records = await topic_snapshot(kafka_bootstrap, app.settings.kafka_topic)

    created = {r.json()["id"] for r in responses if r.status_code == 201}
    assert len(records) == 3
    assert {record_headers(r)["ce_subject"] for r in records} == created


async def test_events_of_one_secret_arrive_in_order(start_app: AppFactory, kafka_bootstrap: str) -> None:
    new_value = CANARY + "-rotated"

    async def lifecycle(app: App, name: str) -> str:
        created = await app.create(name, CANARY)
        assert created.status_code == 201
        secret_id: str = created.json()["id"]
        for _ in range(2):
            updated = await app.http.put(
                f"/api/secrets/{secret_id}", json={"value": new_value}, headers=auth(app.project)
            )
            assert updated.status_code == 200
        deleted = await app.http.delete(f"/api/secrets/{secret_id}", headers=auth(app.project))
        assert deleted.status_code == 200
        return secret_id

    async with start_app(kafka_bootstrap) as app:
        # Five secrets at once, so their events interleave in the outbox and across partitions.
        secret_ids = await asyncio.gather(*(lifecycle(app, f"LIFECYCLE_{i}") for i in range(5)))
        await app.drained()
        records = await topic_snapshot(kafka_bootstrap, app.settings.kafka_topic)

    assert len(records) == 5 * 4
    assert_no_leak(records, CANARY, new_value)
    for secret_id in secret_ids:
        mine = [r for r in records if r.key == secret_id.encode()]
        assert len({r.partition for r in mine}) == 1, "one secret's events span partitions"
        mine.sort(key=lambda r: r.offset)
        types = [record_headers(r)["ce_type"] for r in mine]
        assert types == ["secret.created", "secret.updated", "secret.updated", "secret.deleted"]
        assert all(record_headers(r)["ce_subject"] == secret_id for r in mine)
        assert len({record_headers(r)["ce_id"] for r in mine}) == 4
        events = [data(r) for r in mine]
        assert all(e["secretId"] == secret_id for e in events)
        assert events[0]["createdAt"] == events[0]["updatedAt"]
        assert events[1]["updatedAt"] <= events[2]["updatedAt"]
        assert events[1]["createdAt"] == events[0]["createdAt"]
        assert "deletedAt" in events[3]
        assert [e["version"] for e in events] == [1, 2, 3, 3], "each event names the version it is about"


async def test_creates_succeed_while_kafka_is_down_and_their_events_follow(
    start_app: AppFactory, private_broker: LocalBroker
) -> None:
    n = 10
    # The app points at a port where no broker runs yet.
    async with start_app(private_broker.address, KAFKA_TIMEOUT_SECONDS="2") as app:
        loop = asyncio.get_running_loop()
        started = loop.time()
        responses = await asyncio.gather(*(app.create(f"OFFLINE_{i}", f"v{i}") for i in range(n)))
        elapsed = loop.time() - started
        assert [r.status_code for r in responses] == [201] * n
        assert elapsed < 10, f"creates took {elapsed:.1f}s with Kafka down: they wait on Kafka"
        # Give the relay time to fail against the missing broker at least once.
        await asyncio.sleep(1.5)
        assert await app.pending_events() == n
        assert (await app.http.get("/healthz")).status_code == 200

        await private_broker.astart()
        # No further request wakes the relay: it has to find the pending rows on its own.
        await app.drained(timeout=90)
        created = {r.json()["id"] for r in responses}
        records = await wait_for_records(
            private_broker.address,
            app.settings.kafka_topic,
            lambda rs: {r.key.decode() for r in rs} >= created,
            timeout=30,
            what="the events of the creates made while Kafka was down",
        )
    assert {record_headers(r)["ce_subject"] for r in events_of(records, "secret.created")} == created


class SlowBroker:
    """The real publisher, behind a slow acknowledgement."""

    def __init__(self, publisher: Publisher) -> None:
        self.publisher = publisher
        self.publishing = asyncio.Event()

    async def publish(self, events: Sequence[OutboxEvent]) -> None:
        self.publishing.set()
        await asyncio.sleep(1.0)
        await self.publisher.publish(events)

    async def close(self) -> None:
        await self.publisher.close()


async def test_shutdown_flushes_events_committed_during_the_relays_last_round(
    start_app: AppFactory, kafka_bootstrap: str
) -> None:
    """A healthy broker and ample relay shutdown time: nothing committed before shutdown stays behind."""
    slow: list[SlowBroker] = []

    def slow_broker(settings: Settings) -> SlowBroker:
        slow.append(SlowBroker(kafka_publisher(settings)))
        return slow[0]

    async with start_app(kafka_bootstrap, publisher=slow_broker, RELAY_SHUTDOWN_SECONDS="10") as app:
        publishing = slow[0].publishing
        first = await app.create("FIRST")
        assert first.status_code == 201
        await asyncio.wait_for(publishing.wait(), 30)
        # Committed while the relay's round (which read only FIRST) is still publishing.
        second = await app.create("SECOND")
        assert second.status_code == 201
        # Leaving the block shuts the app down now; the relay has 10s to flush two events.
    assert await app.pending_events() == 0, "an event committed before shutdown was left in the outbox"
    records = await topic_snapshot(kafka_bootstrap, app.settings.kafka_topic)
    assert {record_headers(r)["ce_subject"] for r in records} == {first.json()["id"], second.json()["id"]}
