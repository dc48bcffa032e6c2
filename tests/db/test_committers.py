"""The group committer's two connections on PostgreSQL: a batch that waits for a lock holds up its
own connection only, and creates, which all lock their project's count, never take the second."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from service.settings import Settings
from tests.support.app import auth, created, issue_key
from tests.support.database import is_sqlite

pytestmark = pytest.mark.postgres


@contextlib.asynccontextmanager
async def row_locked(settings: Settings, sql: str, *params: object) -> AsyncIterator[asyncpg.Connection]:
    """An outside transaction holding `sql`'s row locks (SELECT ... FOR UPDATE) until the block ends."""
    conn = await asyncpg.connect(settings.database.postgres_dsn, timeout=10)
    try:
        async with conn.transaction():
            assert await conn.fetch(sql, *params), "the row to lock exists"
            yield conn
    finally:
        await conn.close(timeout=10)


async def committers_waiting_for_a_lock(conn: asyncpg.Connection) -> int:
    """How many of the service's committer connections wait for a lock."""
    waiting = await conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'secrets-service committer%'"
        " AND wait_event_type = 'Lock' AND datname = current_database()"
    )
    return int(waiting)


async def one_committer_waits(conn: asyncpg.Connection) -> None:
    for _ in range(200):
        if await committers_waiting_for_a_lock(conn) == 1:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("no committer connection came to wait for the outside lock")


@pytest.fixture
async def reader(client: httpx.AsyncClient, settings: Settings, project: dict[str, str]) -> dict[str, str]:
    """A key that reads values, and the secret FREE it reads while a committer waits for a lock."""
    if is_sqlite(settings):
        pytest.skip("PostgreSQL only: SQLite commits on one connection")
    await created(client, project, "FREE", "free value")
    return await issue_key(settings, project["projectId"], "secrets:read")


async def test_a_write_waiting_for_a_lock_does_not_hold_up_value_reads(
    client: httpx.AsyncClient, settings: Settings, project: dict[str, str], reader: dict[str, str]
) -> None:
    locked = await created(client, project, "LOCKED", "before")

    async with row_locked(settings, "SELECT id FROM secrets WHERE id = $1 FOR UPDATE", locked["id"]) as conn:
        update = asyncio.create_task(
            client.put(f"/api/secrets/{locked['id']}", json={"value": "after"}, headers=auth(project))
        )
        await one_committer_waits(conn)

        read = await asyncio.wait_for(client.get("/api/secrets/by-name/FREE/value", headers=auth(reader)), 10)

        assert read.status_code == 200 and read.json()["value"] == "free value"
        assert not update.done(), "the update waits for the outside lock"

    assert (await asyncio.wait_for(update, 10)).status_code == 200
    value = await client.get("/api/secrets/by-name/LOCKED/value", headers=auth(reader))
    assert value.json()["value"] == "after"


async def test_creates_wait_on_one_connection_while_reads_take_the_other(
    client: httpx.AsyncClient, settings: Settings, project: dict[str, str], reader: dict[str, str]
) -> None:
    async with row_locked(
        settings, "SELECT id FROM projects WHERE id = $1 FOR UPDATE", project["projectId"]
    ) as conn:
        creates = [
            asyncio.create_task(
                client.post("/api/secrets", json={"name": f"NEW_{i}", "value": "v"}, headers=auth(project))
            )
            for i in range(2)
        ]
        await one_committer_waits(conn)
        read = await asyncio.wait_for(client.get("/api/secrets/by-name/FREE/value", headers=auth(reader)), 10)
        later = asyncio.create_task(
            client.post("/api/secrets", json={"name": "NEW_2", "value": "v"}, headers=auth(project))
        )

        assert read.status_code == 200
        await asyncio.sleep(0.5)
        assert await committers_waiting_for_a_lock(conn) == 1, "no second connection waits on the count"
        assert not any(task.done() for task in [*creates, later])

    answers = await asyncio.wait_for(asyncio.gather(*creates, later), 10)
    assert [answer.status_code for answer in answers] == [201, 201, 201]
