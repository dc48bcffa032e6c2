"""The outbox's bookkeeping: what counts as published, what pruning may drop, and upgrades.

Real databases (the suite's backends); Kafka is not involved: rows are written as the
service writes them, and the relay's progress is set as a publish round leaves it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import pytest_asyncio
from databases import Database

from service import migrations, outbox
from service.migrations import migrate
from service.outbox import EventPublisher, OutboxRelay, RelayLease, iso_utc
from service.repository import count_unpublished
from service.settings import Settings
from service.store import Store

pytestmark = pytest.mark.asyncio

OLD = iso_utc(datetime.now(UTC) - timedelta(days=30))
NOW = iso_utc(datetime.now(UTC))


@pytest_asyncio.fixture
async def database(settings: Settings) -> AsyncIterator[Database]:
    database = Database(settings.database_url)
    await database.connect()
    await migrate(database)
    yield database
    await database.disconnect()


async def add_events(database: Database, created: list[str]) -> list[int]:
    seqs = []
    for i, at in enumerate(created):
        await database.execute(
            "INSERT INTO outbox (event_id, event_type, subject, payload, created_at)"
            " VALUES (:id, 'secret.created', :subject, '{}', :at)",
            {"id": f"event-{i}-{at}", "subject": f"secret-{i}", "at": at},
        )
        seqs.append(int(await database.fetch_val("SELECT MAX(seq) FROM outbox")))
    return seqs


async def publish_through(database: Database, seq: int) -> None:
    """Leave the outbox as a relay that published everything up to seq leaves it."""
    if database.url.dialect == "sqlite":
        await database.execute("UPDATE relay_progress SET published_seq = :seq", {"seq": seq})
    else:
        await database.execute("UPDATE outbox SET published_at = created_at WHERE seq <= :seq", {"seq": seq})


async def remaining(database: Database) -> list[int]:
    return [row[0] for row in await database.fetch_all("SELECT seq FROM outbox ORDER BY seq")]


async def unpublished(database: Database) -> int:
    return int(await database.fetch_val(count_unpublished(database.url.dialect).sql))


async def prune(settings: Settings, database: Database) -> None:
    store = Store(database, "FULL", lambda: None)
    await store.start()
    try:
        relay = OutboxRelay(settings, store, EventPublisher(settings), RelayLease(database))
        await relay._maybe_prune()
    finally:
        await store.stop()


async def test_pruning_drops_published_events_past_retention_and_nothing_else(
    settings: Settings, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outbox, "_PRUNE_CHUNK", 2)  # several chunks, each its own commit
    seqs = await add_events(database, [OLD, OLD, OLD, OLD, OLD, NOW, NOW])
    await publish_through(database, seqs[5])
    assert await unpublished(database) == 1

    await prune(settings, database)

    assert await remaining(database) == [seqs[5], seqs[6]], "recent or unpublished events stay"
    assert await unpublished(database) == 1


async def test_an_unpublished_event_is_never_pruned_however_old(
    settings: Settings, database: Database
) -> None:
    seqs = await add_events(database, [OLD, OLD, OLD])
    await publish_through(database, seqs[0])

    await prune(settings, database)

    assert await remaining(database) == seqs[1:]
    assert await unpublished(database) == 2


async def test_upgrading_a_sqlite_outbox_resumes_where_the_marks_left_off(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not settings.is_sqlite:
        pytest.skip("the cursor is SQLite's")
    database = Database(settings.database_url)
    await database.connect()
    try:
        monkeypatch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:1])
        await migrate(database)
        seqs = await add_events(database, [OLD] * 5)
        # Version 1 marked rows; the relay had published the first three (one out of order is left alone).
        await database.execute(
            "UPDATE outbox SET published_at = :at WHERE seq <= :seq", {"at": NOW, "seq": seqs[2]}
        )
        monkeypatch.undo()

        assert await migrate(database) == 1
        assert await database.fetch_val("SELECT published_seq FROM relay_progress") == seqs[2]
        assert await unpublished(database) == 2, "exactly the unmarked events are left to publish"
    finally:
        await database.disconnect()
