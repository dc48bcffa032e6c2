"""The outbox's bookkeeping: what counts as published, what pruning may drop, and upgrades.

Real databases (the suite's backends); Kafka is not involved: rows are written as the
service writes them, and the relay's progress is set as a publish round leaves it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from service.clock import iso_utc
from service.db.dialect import open_database
from service.db.lease import SoleLease
from service.db.migrations import migrate
from service.db.store import Store
from service.events.relay import OutboxRelay
from service.settings import Settings
from tests.support.clock import FakeClock
from tests.support.database import execute, is_sqlite, pending_events, query
from tests.support.publisher import InMemoryPublisher

CLOCK = FakeClock()
OLD = iso_utc(CLOCK.now() - timedelta(days=30))
NOW = iso_utc(CLOCK.now())


@pytest.fixture
async def migrated(settings: Settings) -> AsyncIterator[Settings]:
    database = open_database(settings.database)
    await database.open()
    try:
        await migrate(database)
    finally:
        await database.close()
    yield settings


async def add_events(settings: Settings, created: list[str]) -> list[int]:
    seqs = []
    for i, at in enumerate(created):
        await execute(
            settings,
            "INSERT INTO outbox (event_id, event_type, subject, payload, created_at)"
            " VALUES (?, 'secret.created', ?, '{}', ?)",
            f"event-{i}-{at}",
            f"secret-{i}",
            at,
        )
        seqs.append(int((await query(settings, "SELECT MAX(seq) FROM outbox"))[0][0]))
    return seqs


async def publish_through(settings: Settings, seq: int) -> None:
    """Leave the outbox as a relay that published everything up to seq leaves it."""
    if is_sqlite(settings):
        await execute(settings, "UPDATE relay_progress SET published_seq = ?", seq)
    else:
        await execute(settings, "UPDATE outbox SET published_at = created_at WHERE seq <= ?", seq)


async def remaining(settings: Settings) -> list[int]:
    return [row[0] for row in await query(settings, "SELECT seq FROM outbox ORDER BY seq")]


async def prune(settings: Settings, chunk: int = 10_000) -> int:
    database = open_database(settings.database)
    await database.open()
    store = Store(database)
    await store.start()
    try:
        relay = OutboxRelay(store, InMemoryPublisher(), SoleLease(), CLOCK, retention_seconds=7 * 24 * 3600)
        return await relay.prune(chunk)
    finally:
        await store.stop()
        await database.close()


async def test_pruning_drops_published_events_past_retention_and_nothing_else(migrated: Settings) -> None:
    seqs = await add_events(migrated, [OLD, OLD, OLD, OLD, OLD, NOW, NOW])
    await publish_through(migrated, seqs[5])
    assert await pending_events(migrated) == 1

    # Several chunks, each its own commit.
    assert await prune(migrated, chunk=2) == 5

    assert await remaining(migrated) == [seqs[5], seqs[6]], "recent or unpublished events stay"
    assert await pending_events(migrated) == 1


async def test_an_unpublished_event_is_never_pruned_however_old(migrated: Settings) -> None:
    seqs = await add_events(migrated, [OLD, OLD, OLD])
    await publish_through(migrated, seqs[0])

    assert await prune(migrated) == 1

    assert await remaining(migrated) == seqs[1:]
    assert await pending_events(migrated) == 2


async def test_upgrading_a_sqlite_outbox_resumes_where_the_marks_left_off(settings: Settings) -> None:
    if not is_sqlite(settings):
        pytest.skip("the cursor is SQLite's")
    database = open_database(settings.database)
    await database.open()
    try:
        assert await migrate(database, upto=1) == 1
        seqs = await add_events(settings, [OLD] * 5)
        # Version 1 marked rows; the relay had published the first three.
        await execute(settings, "UPDATE outbox SET published_at = ? WHERE seq <= ?", NOW, seqs[2])

        assert await migrate(database, upto=2) == 1
        assert (await query(settings, "SELECT published_seq FROM relay_progress"))[0][0] == seqs[2]
        assert await pending_events(settings) == 2, "exactly the unmarked events are left to publish"
    finally:
        await database.close()
