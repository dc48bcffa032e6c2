"""The one place that picks a database from its URL."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

from service.db.migrations import migrate
from service.db.postgres import PostgresDatabase
from service.db.sqlite import SQLiteDatabase
from service.db.store import Database, Store
from service.db.url import DatabaseURL


def open_database(url: DatabaseURL, sqlite_synchronous: str = "FULL") -> Database:
    """The database a URL names, not yet opened."""
    if url.dialect == "sqlite":
        return SQLiteDatabase(url.sqlite_path, sqlite_synchronous)
    return PostgresDatabase(url.postgres_dsn)


@contextlib.asynccontextmanager
async def open_store(
    url: DatabaseURL,
    sqlite_synchronous: str = "FULL",
    on_events_committed: Callable[[], None] = lambda: None,
) -> AsyncIterator[Store]:
    """An opened, migrated database and a started store; both closed on the way out."""
    database = open_database(url, sqlite_synchronous)
    await database.open()
    try:
        await migrate(database)
        store = Store(database, on_events_committed)
        await store.start()
        try:
            yield store
        finally:
            await store.stop()
    finally:
        await database.close()
