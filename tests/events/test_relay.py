"""The relay against a real database and an in-memory publisher: order, at-least-once, leases, shutdown.

The Kafka side of the same paths runs against the real broker in test_kafka.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import pytest

from service.clock import iso_utc
from service.db.dialect import open_database
from service.db.lease import Lease, SoleLease
from service.db.migrations import migrate
from service.db.plan import StatementJob
from service.db.store import Store
from service.events.model import new_event
from service.events.relay import OutboxRelay
from service.events.sql import insert_events
from service.settings import Settings
from tests.support.clock import FakeClock
from tests.support.database import pending_events
from tests.support.publisher import InMemoryPublisher
from tests.support.waiting import poll_until


class Standby:
    """A lease another replica holds."""

    async def held(self) -> bool:
        return False

    async def release(self) -> None:
        pass


RelayFactory = Callable[..., AbstractAsyncContextManager[tuple[Store, OutboxRelay]]]


@pytest.fixture
def relay_on(settings: Settings) -> RelayFactory:
    """A started store and relay on the test's database, publishing to `publisher`."""

    @asynccontextmanager
    async def start(
        publisher: InMemoryPublisher,
        lease: Lease | None = None,
        shutdown_seconds: float = 2.0,
        clock: FakeClock | None = None,
        retry_seconds: tuple[float, float] = (0.2, 5.0),
    ) -> AsyncIterator[tuple[Store, OutboxRelay]]:
        database = open_database(settings.database)
        await database.open()
        await migrate(database)
        relay: OutboxRelay | None = None
        store = Store(database, lambda: relay.wake() if relay else None)
        relay = OutboxRelay(
            store,
            publisher,
            lease or SoleLease(),
            clock or FakeClock(),
            poll_seconds=0.05,
            shutdown_seconds=shutdown_seconds,
            retry_seconds=retry_seconds,
        )
        await store.start()
        await relay.start()
        try:
            yield store, relay
        finally:
            await relay.stop()
            await store.stop()
            await database.close()

    return start


class EventJob(StatementJob):
    """Events committed as the service commits them (the relay is woken after the commit)."""

    writes_events = True


async def commit_events(store: Store, subjects: list[str]) -> list[str]:
    at = iso_utc(FakeClock().now())
    events = [new_event("secret.created", subject, {"secretId": subject}, at) for subject in subjects]
    await store.write(EventJob(insert_events(events)))
    return [event.event_id for event in events]


async def test_committed_events_are_published_once_in_commit_order(
    relay_on: RelayFactory, settings: Settings
) -> None:
    publisher = InMemoryPublisher()
    async with relay_on(publisher) as (store, _relay):
        first = await commit_events(store, ["a", "b"])
        second = await commit_events(store, ["c"])
        await poll_until(lambda: len(publisher.published) == 3, 10, interval=0.02, what="three events")
    assert [e.event_id for e in publisher.published] == first + second
    assert await pending_events(settings) == 0

    # A restarted relay has nothing left to send.
    again = InMemoryPublisher()
    async with relay_on(again):
        await asyncio.sleep(0.3)
    assert again.published == []


async def test_the_record_of_what_is_published_catches_up_once_commits_stop(
    relay_on: RelayFactory, settings: Settings
) -> None:
    # The test's clock stands still: after the first round, each record waits for the relay to idle.
    publisher = InMemoryPublisher()
    async with relay_on(publisher) as (store, _relay):
        for n, subject in enumerate(["a", "b", "c", "d"], start=1):
            await commit_events(store, [subject])
            await poll_until(lambda: len(publisher.published) == n, 10, interval=0.01, what="a publish")  # noqa: B023
        assert publisher.calls == 4, "each event went out in a round of its own"

        async def nothing_pending() -> bool:
            return await pending_events(settings) == 0

        # With the relay still running: a restart from here would not publish them again.
        await poll_until(nothing_pending, 5, interval=0.02, what="the record of the last round")


async def test_a_failed_publish_leaves_the_events_pending_until_it_succeeds(
    relay_on: RelayFactory, settings: Settings
) -> None:
    publisher = InMemoryPublisher()
    publisher.failures = 2
    async with relay_on(publisher) as (store, _relay):
        ids = await commit_events(store, ["a", "b", "c"])
        await poll_until(lambda: len(publisher.published) == 3, 15, interval=0.02, what="the retried publish")
        assert publisher.calls >= 3
    assert [e.event_id for e in publisher.published] == ids
    assert await pending_events(settings) == 0


async def test_a_standby_publishes_nothing(relay_on: RelayFactory, settings: Settings) -> None:
    publisher = InMemoryPublisher()
    async with relay_on(publisher, lease=Standby()) as (store, _relay):
        await commit_events(store, ["a"])
        await asyncio.sleep(0.3)
    assert publisher.calls == 0
    assert await pending_events(settings) == 1


async def test_shutdown_is_bounded_when_the_broker_never_acknowledges(
    relay_on: RelayFactory, settings: Settings
) -> None:
    publisher = InMemoryPublisher()
    publisher.gate = asyncio.Event()  # never set: every publish hangs
    loop = asyncio.get_running_loop()
    async with relay_on(publisher, shutdown_seconds=0.5) as (store, _relay):
        await commit_events(store, ["a", "b"])
        await asyncio.wait_for(publisher.entered.wait(), 10)
        stopping = loop.time()
    assert loop.time() - stopping < 5, "stop() waited on the broker past its bound"
    assert publisher.published == []
    assert await pending_events(settings) == 2, "unacknowledged events stay in the outbox"


async def test_shutdown_flushes_what_committed_during_the_last_round(
    relay_on: RelayFactory, settings: Settings
) -> None:
    publisher = InMemoryPublisher()
    publisher.gate = asyncio.Event()
    async with relay_on(publisher, shutdown_seconds=5) as (store, _relay):
        first = await commit_events(store, ["a"])
        await asyncio.wait_for(publisher.entered.wait(), 10)
        # Committed while the round that read only "a" is still publishing.
        second = await commit_events(store, ["b"])
        asyncio.get_running_loop().call_later(0.2, publisher.gate.set)
    assert [e.event_id for e in publisher.published] == first + second
    assert await pending_events(settings) == 0


async def test_a_broker_outage_is_logged_when_it_starts_every_30s_and_when_it_ends(
    relay_on: RelayFactory, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="service.events")
    publisher = InMemoryPublisher()
    publisher.failures = 10**6
    clock = FakeClock()

    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "service.events"]

    async with relay_on(publisher, clock=clock, retry_seconds=(0.001, 0.005)) as (store, _relay):

        async def failed_attempts(n: int) -> None:
            target = publisher.calls + n
            await poll_until(lambda: publisher.calls >= target, 10, interval=0.01, what=f"{n} more attempts")

        await commit_events(store, ["a", "b", "c"])
        await failed_attempts(5)
        assert lines() == [
            "Kafka unavailable: the in-memory broker is down; events wait in the outbox (3 pending) "
            "and go out when it is back"
        ]
        clock.advance(29)
        await failed_attempts(3)
        assert len(lines()) == 1, "a reminder came before 30 s"
        clock.advance(1)
        # Two: an attempt's line is written after it fails (once the outbox is counted, a round trip
        # on PostgreSQL), and before the next attempt.
        await failed_attempts(2)
        assert len(lines()) == 2
        assert lines()[1].startswith("Kafka still unavailable after 30s (")
        assert lines()[1].endswith(": the in-memory broker is down; 3 events pending in the outbox")
        clock.advance(20)
        await failed_attempts(3)
        assert len(lines()) == 2, "a second reminder came 20 s after the first"
        clock.advance(15)
        await failed_attempts(2)
        assert len(lines()) == 3 and lines()[2].startswith("Kafka still unavailable after 65s (")

        publisher.failures = 0
        await poll_until(lambda: len(publisher.published) == 3, 10, interval=0.02, what="the events")
        await commit_events(store, ["d"])
        await poll_until(lambda: len(publisher.published) == 4, 10, interval=0.02, what="a later event")
    assert len(lines()) == 4, lines()
    assert lines()[3].startswith("Kafka available again after 65s (")
    assert await pending_events(settings) == 0


async def test_commits_do_not_cut_the_backoff_after_a_failed_publish_short(relay_on: RelayFactory) -> None:
    publisher = InMemoryPublisher()
    publisher.failures = 10**6
    async with relay_on(publisher, retry_seconds=(1.0, 1.0)) as (store, _relay):
        await commit_events(store, ["a"])
        await poll_until(lambda: publisher.calls >= 1, 10, interval=0.01, what="the first attempt")
        # Each commit wakes the relay; during a backoff that must not mean another attempt.
        for i in range(20):
            await commit_events(store, [f"b{i}"])
            await asyncio.sleep(0.02)
        assert publisher.calls <= 2, f"{publisher.calls} attempts within one 1 s backoff"
