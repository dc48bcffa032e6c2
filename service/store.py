"""Database access: one long-lived writer connection that commits many jobs at once.

Concurrent writes are queued and run by a single task on a single connection, many
of them in one transaction (group commit): one fsync covers the whole batch, yet each
caller still gets its own result, and is answered only after the commit. If a batch
fails as a whole, each job is retried alone, so one bad job fails only itself.

Reads on SQLite go through one long-lived reader connection too: `databases` would
otherwise open (and close, with a WAL checkpoint) a new SQLite connection per task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

from databases import Database
from databases.core import Connection

from service.errors import ServiceError, ServiceUnavailable
from service.statements import Fetch, Plan, fetch_rows, run_postgres, run_sqlite

logger = logging.getLogger("service.store")

T = TypeVar("T")
Read = Callable[[Connection], Awaitable[T]]


class WriteJob(Protocol):
    """A unit of work for the committer. Consecutive jobs of one class are planned together."""

    writes_events: bool

    @classmethod
    def plan_batch(cls, jobs: Sequence[Any], dialect: str) -> Plan[list[Any]]:
        """Statements for the jobs, in order; returns one outcome each (a ServiceError is raised to its caller)."""
        ...


def open_database(url: str) -> Database:
    return Database(url)


async def configure_connection(conn: Connection, synchronous: str = "FULL") -> None:
    if conn._database.url.dialect != "sqlite":
        return
    raw = conn.raw_connection
    for pragma in (
        "PRAGMA journal_mode=WAL",
        f"PRAGMA synchronous={synchronous}",
        "PRAGMA busy_timeout=5000",
        "PRAGMA secure_delete=ON",
        # The default 2 MB page cache misses constantly once the unique (project_id, name) index is large.
        "PRAGMA cache_size=-32768",
    ):
        async with raw.execute(pragma) as cursor:
            await cursor.fetchall()


@contextlib.asynccontextmanager
async def write_transaction(conn: Connection) -> AsyncIterator[None]:
    """A write transaction; on SQLite it takes the write lock up front (BEGIN IMMEDIATE).

    Plain statements rather than `databases`' Transaction: that one leaves its
    connection marked in use when COMMIT fails on a dropped connection.
    """
    raw = conn.raw_connection
    await raw.execute("BEGIN IMMEDIATE" if conn._database.url.dialect == "sqlite" else "BEGIN")
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            await raw.execute("ROLLBACK")
        raise
    await raw.execute("COMMIT")


async def expire_pool(database: Database) -> None:
    """After a lost PostgreSQL connection, the pool's idle ones are likely dead too: replace them all."""
    pool = getattr(getattr(database, "_backend", None), "_pool", None)
    if pool is not None and hasattr(pool, "expire_connections"):
        await pool.expire_connections()


@contextlib.asynccontextmanager
async def _own_connection(database: Database) -> AsyncIterator[Connection]:
    """A connection for one worker's lifetime, kept out of `databases`' per-task registry."""
    conn = Connection(database, database._backend)
    await conn.__aenter__()
    try:
        yield conn
    finally:
        with contextlib.suppress(Exception):
            await conn.__aexit__(None, None, None)


class _Worker:
    """A task that owns one connection and serves queued work on it."""

    def __init__(self, database: Database, name: str, synchronous: str) -> None:
        self._database = database
        self._name = name
        self._synchronous = synchronous
        self._queue: deque[tuple[Any, asyncio.Future[Any]]] = deque()
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self._name)
        ready = asyncio.create_task(self._ready.wait())
        done, _ = await asyncio.wait({ready, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if self._task in done:
            ready.cancel()
            self._task.result()

    async def stop(self) -> None:
        """Finish what is queued, then close the connection."""
        self._stopping = True
        self._wakeup.set()
        if self._task is not None:
            await self._task

    def _enqueue(self, item: Any) -> asyncio.Future[Any]:
        if self._stopping:
            raise ServiceUnavailable("The service is shutting down")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        self._wakeup.set()
        return future

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            try:
                async with _own_connection(self._database) as conn:
                    await configure_connection(conn, self._synchronous)
                    self._ready.set()
                    backoff = 0.1
                    await self._serve(conn)
                    return
            except _ConnectionLost as exc:
                await expire_pool(self._database)
                logger.warning("%s lost its database connection (%s); reconnecting", self._name, exc)
            except Exception as exc:
                if not self._ready.is_set():
                    raise
                await expire_pool(self._database)
                logger.warning("%s could not connect (%s); retrying", self._name, type(exc).__name__)
            self._fail_queued(ServiceUnavailable("The database is unavailable; retry shortly"))
            if self._stopping:
                return
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    async def _serve(self, conn: Connection) -> None:
        while True:
            if not self._queue:
                if self._stopping:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await self._process(conn)

    def _fail_queued(self, exc: Exception) -> None:
        while self._queue:
            _, future = self._queue.popleft()
            if not future.done():
                future.set_exception(exc)

    async def _process(self, conn: Connection) -> None:
        raise NotImplementedError


class _ConnectionLost(Exception):
    pass


async def _still_connected(conn: Connection) -> bool:
    try:
        await asyncio.wait_for(conn.fetch_val("SELECT 1"), timeout=5)
    except Exception:
        return False
    return True


class Reader(_Worker):
    async def run(self, read: Read[T]) -> T:
        result: T = await self._enqueue(read)
        return result

    async def _process(self, conn: Connection) -> None:
        read, future = self._queue.popleft()
        if future.done():
            return
        try:
            result = await read(conn)
        except Exception as exc:
            future.set_exception(exc)
            if not await _still_connected(conn):
                raise _ConnectionLost(type(exc).__name__) from None
        else:
            future.set_result(result)


class GroupCommitter(_Worker):
    def __init__(
        self,
        database: Database,
        synchronous: str,
        on_events_committed: Callable[[], None],
        max_batch: int = 256,
    ) -> None:
        super().__init__(database, "group-committer", synchronous)
        self._sqlite = database.url.dialect == "sqlite"
        self._on_events_committed = on_events_committed
        self._max_batch = max_batch

    async def submit(self, job: WriteJob) -> Any:
        return await self._enqueue(job)

    async def _process(self, conn: Connection) -> None:
        batch = [self._queue.popleft() for _ in range(min(len(self._queue), self._max_batch))]
        await self._commit(conn, batch)

    async def _commit(self, conn: Connection, batch: list[tuple[Any, asyncio.Future[Any]]]) -> None:
        jobs = [job for job, _ in batch]
        try:
            if self._sqlite:
                raw = conn.raw_connection
                # One hop to the connection's thread for the whole transaction.
                outcomes = await raw._execute(_commit_on_sqlite, raw, jobs)
            else:
                async with write_transaction(conn):
                    outcomes = await run_postgres(conn.raw_connection, _batch_plan(jobs, "postgresql"))
        except Exception as exc:
            if not await _still_connected(conn):
                for _, future in batch:
                    if not future.done():
                        future.set_exception(ServiceUnavailable("The database is unavailable; retry shortly"))
                raise _ConnectionLost(type(exc).__name__) from None
            if len(batch) > 1:
                for item in batch:
                    await self._commit(conn, [item])
                return
            future = batch[0][1]
            if not future.done():
                future.set_exception(_as_client_error(exc))
            return
        if any(job.writes_events for job in jobs):
            self._on_events_committed()
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if future.done():
                continue
            if isinstance(outcome, ServiceError):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)


def _commit_on_sqlite(raw: Any, jobs: list[Any]) -> list[Any]:
    """Runs in the aiosqlite thread: BEGIN IMMEDIATE, every plan, COMMIT."""
    db: sqlite3.Connection = raw._conn
    db.execute("BEGIN IMMEDIATE")
    try:
        outcomes = run_sqlite(db, _batch_plan(jobs, "sqlite"))
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    if any(getattr(job, "scrubs_old_values", False) for job in jobs):
        # Replaced or deleted ciphertext lingers in WAL frames until a checkpoint; truncate them away.
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    return outcomes


def _batch_plan(jobs: list[Any], dialect: str) -> Plan[list[Any]]:
    outcomes: list[Any] = []
    start = 0
    while start < len(jobs):
        end = start + 1
        while end < len(jobs) and type(jobs[end]) is type(jobs[start]):
            end += 1
        outcomes.extend((yield from type(jobs[start]).plan_batch(jobs[start:end], dialect)))
        start = end
    return outcomes


def _is_connection_error(exc: BaseException) -> bool:
    """A lost or refused database connection (asyncpg's classes are matched by name: it is optional)."""
    if isinstance(exc, (OSError, TimeoutError)):
        return True
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(
        names
        & {
            "PostgresConnectionError",
            "InterfaceError",
            "CannotConnectNowError",
            "TooManyConnectionsError",
            "ConnectionDoesNotExistError",
            "AdminShutdownError",
        }
    )


def _is_closed(conn: Connection) -> bool:
    try:
        return bool(conn.raw_connection.is_closed())
    except Exception:
        return True


def _as_client_error(exc: Exception) -> Exception:
    """Serialization failures and lock timeouts are the client's to retry: 503, not 500."""
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate in ("40001", "40P01", "55P03") or "database is locked" in str(exc):
        return ServiceUnavailable("The database is busy; retry shortly")
    return exc


class Store:
    """Reads and writes for the app: the committer for writes, a reader (SQLite) or the pool (PostgreSQL)."""

    def __init__(self, database: Database, synchronous: str, on_events_committed: Callable[[], None]) -> None:
        self.database = database
        self._sqlite = database.url.dialect == "sqlite"
        self.committer = GroupCommitter(database, synchronous, on_events_committed)
        self._reader = Reader(database, "reader", synchronous) if self._sqlite else None

    async def start(self) -> None:
        await self.committer.start()
        if self._reader is not None:
            await self._reader.start()

    async def stop(self) -> None:
        await self.committer.stop()
        if self._reader is not None:
            await self._reader.stop()

    async def write(self, job: WriteJob) -> Any:
        return await self.committer.submit(job)

    async def fetch(self, statement: Fetch) -> Sequence[Sequence[Any]]:
        """A read statement straight to the driver, for the relay's hot loop."""
        return await self.read(lambda conn: fetch_rows(conn, statement))

    async def read(self, read: Read[T]) -> T:
        if self._reader is not None:
            return await self._reader.run(read)
        try:
            async with self.database.connection() as conn:
                try:
                    return await read(conn)
                except Exception as exc:
                    if _is_connection_error(exc) or _is_closed(conn):
                        raise _ConnectionLost(type(exc).__name__) from None
                    raise
        except Exception as exc:
            if isinstance(exc, _ConnectionLost) or _is_connection_error(exc):
                await expire_pool(self.database)
                raise ServiceUnavailable("The database is unavailable; retry shortly") from None
            raise
