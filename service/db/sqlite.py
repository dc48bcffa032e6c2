"""SQLite through the standard library's sqlite3: one connection per thread of its own.

Every call is one hop to the connection's thread, and a whole plan (a batch's
transaction, statement after statement) runs in that one hop: under load the
hand-offs of the GIL between the event loop and the driver's thread dominated the
commit time. aiosqlite does the same with a thread per connection, but offers no
public way to run a function on its thread, so this room owns the thread instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import orjson

from service.db.plan import Execute, Fetch, FetchByKeys, Plan, UpdateMany
from service.db.url import Dialect
from service.errors import ServiceError, ServiceUnavailable, StorageFull

T = TypeVar("T")

logger = logging.getLogger("service.db")


def _pragmas(synchronous: str) -> tuple[str, ...]:
    return (
        "PRAGMA journal_mode=WAL",
        f"PRAGMA synchronous={synchronous}",
        "PRAGMA busy_timeout=5000",
        "PRAGMA secure_delete=ON",
        "PRAGMA foreign_keys=ON",
        # The default 2 MB page cache misses constantly once the unique (project_id, name) index is large.
        "PRAGMA cache_size=-32768",
    )


def prepare_file(path: Path) -> None:
    """Create the database file private (0600), and its directory (0700), before SQLite opens it.

    SQLite gives the -wal and -shm files the database file's permissions. An existing
    file is only chmod-ed, never opened here: closing any descriptor of a file releases
    every POSIX lock this process holds on it, SQLite's included (see "How To Corrupt An
    SQLite Database File", section 2.2), so only a file that does not exist yet is created.
    """
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        os.close(fd)
    for existing in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        with contextlib.suppress(FileNotFoundError):
            if existing.stat().st_mode & 0o077:
                existing.chmod(0o600)


def run_plan(db: sqlite3.Connection, plan: Plan[T]) -> T:
    """Run a plan synchronously on a sqlite3 connection (in its thread)."""
    result: Any = None
    try:
        while True:
            statement = plan.send(result)
            if isinstance(statement, Fetch):
                if statement.packed:
                    sql = (
                        f"SELECT json_group_array(json_array({', '.join(statement.packed)}))"
                        f" FROM ({statement.sql})"
                    )
                    result = orjson.loads(db.execute(sql, statement.params).fetchone()[0])
                else:
                    result = db.execute(statement.sql, statement.params).fetchall()
            elif isinstance(statement, FetchByKeys):
                result = db.execute(*_ored_keys(statement)).fetchall() if statement.keys else []
            elif isinstance(statement, Execute):
                result = db.execute(statement.sql, statement.params).rowcount
            elif isinstance(statement, UpdateMany):
                if statement.rows:
                    db.execute(*_update_from_values(statement))
                result = None
            else:
                if statement.rows:
                    db.executemany(statement.sql, statement.rows)
                result = None
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


def _ored_keys(statement: FetchByKeys) -> tuple[str, list[Any]]:
    match = "(" + " AND ".join(f"{column} = ?" for column in statement.key) + ")"
    sql = (
        f"SELECT {', '.join(statement.columns)} FROM {statement.table}"
        f" WHERE {' OR '.join([match] * len(statement.keys))}"
    )
    return sql, [value for key in statement.keys for value in key]


def _update_from_values(statement: UpdateMany) -> tuple[str, list[Any]]:
    # A VALUES list's columns are column1, column2, ...: the key first, then the columns.
    sets = ", ".join(f"{column} = v.column{i + 2}" for i, column in enumerate(statement.columns))
    marks = "(" + ", ".join("?" * (len(statement.columns) + 1)) + ")"
    sql = (
        f"UPDATE {statement.table} SET {sets} FROM (VALUES {', '.join([marks] * len(statement.rows))}) AS v"
        f" WHERE {statement.table}.{statement.key} = v.column1"
    )
    return sql, [value for row in statement.rows for value in row]


# Replaced or deleted ciphertext lingers in WAL frames until a checkpoint truncates them away. A
# checkpoint after every such commit took 15% of the writer's time under updates; one this many
# seconds after the first of them copies each page once, however many commits replaced it.
SCRUB_WITHIN_SECONDS = 0.5


def _in_transaction(db: sqlite3.Connection, plan: Plan[T]) -> T:
    # BEGIN IMMEDIATE takes the write lock up front: a deferred transaction that reads
    # first can fail at once with "database is locked" when it later writes.
    db.execute("BEGIN IMMEDIATE")
    try:
        result = run_plan(db, plan)
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return result


class SQLiteConnection:
    """A sqlite3 connection living on a thread of its own; calls queue for that thread in order."""

    def __init__(self, path: Path, synchronous: str, name: str) -> None:
        self._path = path
        self._synchronous = synchronous
        self._calls: queue.SimpleQueue[tuple[asyncio.Future[Any], Callable[[], Any]] | None] = (
            queue.SimpleQueue()
        )
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._db: sqlite3.Connection | None = None
        # When the WAL must be checkpointed by (monotonic), after a commit that removed values.
        self._scrub_by: float | None = None

    async def open(self) -> None:
        self._thread.start()
        await self._call(self._connect)

    def _connect(self) -> None:
        # Autocommit mode: transactions are begun and ended explicitly, never implicitly by the module.
        db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=True)
        try:
            for pragma in _pragmas(self._synchronous):
                db.execute(pragma).fetchall()
        except BaseException:
            db.close()
            raise
        self._db = db

    def _serve(self) -> None:
        while True:
            try:
                call = self._calls.get(timeout=self._until_scrub())
            except queue.Empty:
                self._scrub()
                continue
            if call is None:
                return
            future, function = call
            try:
                result = function()
            except BaseException as exc:
                future.get_loop().call_soon_threadsafe(_set_exception, future, exc)
            else:
                future.get_loop().call_soon_threadsafe(_set_result, future, result)
            if self._scrub_by is not None and time.monotonic() >= self._scrub_by:
                self._scrub()

    def _until_scrub(self) -> float | None:
        """How long the thread may wait for a call before the WAL is due a scrub (None: no scrub due)."""
        return None if self._scrub_by is None else max(0.0, self._scrub_by - time.monotonic())

    def _write(self, db: sqlite3.Connection, plan: Plan[T], scrub: bool) -> T:
        result = _in_transaction(db, plan)
        if scrub and self._scrub_by is None:
            self._scrub_by = time.monotonic() + SCRUB_WITHIN_SECONDS
        return result

    def _scrub(self) -> None:
        db = self._db
        if db is None:
            self._scrub_by = None
            return
        try:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.Error as exc:
            # Busy readers: the next commit or idle moment tries again.
            logger.warning("the WAL checkpoint that scrubs removed values failed (%s)", type(exc).__name__)
            self._scrub_by = time.monotonic() + SCRUB_WITHIN_SECONDS
        else:
            self._scrub_by = None

    async def _call(self, function: Callable[[], T]) -> T:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._calls.put((future, function))
        return await future

    async def run(self, plan: Plan[T], *, write: bool = False, scrub: bool = False) -> T:
        """Run a plan in one hop; with `write`, inside a transaction that commits at its end."""
        db = self._db
        if db is None:
            raise ServiceUnavailable("The database is not open")
        if write:
            return await self._call(lambda: self._write(db, plan, scrub))
        return await self._call(lambda: run_plan(db, plan))

    async def alive(self) -> bool:
        return self._db is not None

    async def close(self) -> None:
        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                await self._call(self._disconnect)
            self._calls.put(None)
            await asyncio.to_thread(self._thread.join, 10)

    def _disconnect(self) -> None:
        if self._scrub_by is not None:
            self._scrub()
        db, self._db = self._db, None
        if db is not None:
            db.close()


def _set_result(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _set_exception(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


def fault(exc: BaseException) -> ServiceError | None:
    """The client's error for a driver exception, when it is one (a retryable condition), else None."""
    if isinstance(exc, sqlite3.OperationalError):
        if exc.sqlite_errorcode == sqlite3.SQLITE_FULL:
            return StorageFull()
        if exc.sqlite_errorcode == sqlite3.SQLITE_BUSY:
            return ServiceUnavailable("The database is busy; retry shortly")
    return None


class SQLiteDatabase:
    """One file, one writer: the committer's connection, plus a long-lived one for reads.

    A connection per request would cost a thread start each, and the close of the
    last connection to a WAL database checkpoints it.
    """

    dialect: Dialect = "sqlite"
    single_writer = True
    writers = 1

    def __init__(self, path: Path, synchronous: str) -> None:
        self.path = path
        self._synchronous = synchronous
        self._reader: SQLiteConnection | None = None

    async def open(self) -> None:
        if sqlite3.sqlite_version_info < (3, 35):
            # INSERT ... ON CONFLICT DO NOTHING and RETURNING.
            raise RuntimeError(f"SQLite 3.35 or later is needed; this Python has {sqlite3.sqlite_version}")
        reader = SQLiteConnection(self.path, self._synchronous, "sqlite-reader")
        try:
            await asyncio.to_thread(prepare_file, self.path)
            await reader.open()
        except (OSError, sqlite3.Error) as exc:
            await reader.close()
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ServiceUnavailable(
                f"The SQLite database {self.path} cannot be opened ({reason}); check DATABASE_URL"
            ) from None
        self._reader = reader

    async def close(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            await reader.close()

    async def connect(self, name: str) -> SQLiteConnection:
        conn = SQLiteConnection(self.path, self._synchronous, f"sqlite-{name}")
        try:
            await conn.open()
        except BaseException:
            await conn.close()
            raise
        return conn

    async def read(self, plan: Plan[T]) -> T:
        if self._reader is None:
            raise ServiceUnavailable("The database is not open")
        return await self._reader.run(plan)

    def fault(self, exc: BaseException) -> ServiceError | None:
        return fault(exc)
