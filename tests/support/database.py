"""The test's own view of the database: fresh PostgreSQL databases, and rows read straight from it."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import asyncpg

from service.crypto import Binding, Keyring, unseal
from service.db.dialect import open_database
from service.db.plan import Execute, Fetch, single
from service.db.sqlite import SCRUB_WITHIN_SECONDS
from service.db.store import Database
from service.db.url import DatabaseURL
from service.events.relay import CursorProgress, MarkedProgress
from service.settings import Settings


@contextlib.contextmanager
def fresh_postgres_database(server_url: str, prefix: str = "test_") -> Iterator[str]:
    """A new, empty database on the PostgreSQL server of server_url, dropped afterwards."""
    server = DatabaseURL.parse(server_url)
    name = prefix + uuid.uuid4().hex[:12]
    dsn = server.with_database("postgres").postgres_dsn

    async def admin_sql(sql: str) -> None:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin_sql(f'CREATE DATABASE "{name}"'))
    try:
        yield server.with_database(name).url
    finally:
        asyncio.run(admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def is_sqlite(settings: Settings) -> bool:
    return settings.database.dialect == "sqlite"


@contextlib.asynccontextmanager
async def connected(settings: Settings) -> AsyncIterator[Database]:
    """The settings' database, opened by the test itself (beside any running app)."""
    database = open_database(settings.database, settings.sqlite_synchronous)
    await database.open()
    try:
        yield database
    finally:
        await database.close()


async def query(settings: Settings, sql: str, *params: Any) -> list[Sequence[Any]]:
    """Rows of one statement (`?` placeholders), through a connection of the test's own."""
    async with connected(settings) as database:
        return list(await database.read(single(Fetch(sql, params))))


async def execute(settings: Settings, sql: str, *params: Any) -> int:
    """Run one write statement and commit it; returns how many rows it changed."""
    async with connected(settings) as database:
        conn = await database.connect("test")
        try:
            changed: int = await conn.run(single(Execute(sql, params)), write=True)
            return changed
        finally:
            await conn.close()


async def pending_events(settings: Settings) -> int:
    """Committed events the relay has yet to publish (counted as the relay counts them)."""
    progress = CursorProgress() if is_sqlite(settings) else MarkedProgress()
    rows = await query(settings, progress.count_pending().sql)
    return int(rows[0][0])


async def stored_value(settings: Settings, secret: dict[str, Any]) -> str:
    """The stored ciphertext of a secret's current value, opened with the service's keys and the row it is bound to."""
    rows = await query(
        settings,
        "SELECT sealed_value, version FROM secrets WHERE id = ? AND project_id = ?",
        secret["id"],
        secret["projectId"],
    )
    assert rows, "no such secret stored"
    keyring = Keyring.parse(settings.master_keys.reveal())
    binding = Binding(secret["projectId"], secret["id"], secret["name"], rows[0][1])
    return unseal(keyring, bytes(rows[0][0]), binding)


async def events_for(settings: Settings, secret_id: str) -> list[str]:
    """The types of the outbox events about one secret, in commit order."""
    rows = await query(settings, "SELECT event_type FROM outbox WHERE subject = ? ORDER BY seq", secret_id)
    return [row[0] for row in rows]


async def traceless(directory: Path, sealed: bytes, within: float = SCRUB_WITHIN_SECONDS + 1.0) -> None:
    """Wait until no SQLite file in `directory` holds `sealed`, failing after `within` seconds: removed
    ciphertext lingers in the WAL until the checkpoint that follows at most SCRUB_WITHIN_SECONDS later."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        files = list(directory.glob("secrets.db*"))
        assert any(f.name.endswith("-wal") for f in files)
        holding = [f.name for f in files if sealed in f.read_bytes()]
        if not holding:
            return
        assert loop.time() < deadline, f"still in {holding} {within} s later"
        await asyncio.sleep(0.05)
