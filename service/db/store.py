"""The store: reads, and writes committed many at a time (group commit).

Concurrent writes are queued and run by a task on its own connection (two such tasks
on PostgreSQL), many of them in one transaction: one fsync covers the whole batch, yet
each caller still gets its own outcome, and is answered only after the commit. If a
batch fails as a whole, each job is retried alone, so one bad job fails only itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from service import metrics
from service.db.plan import Fetch, Plan, WriteJob, batch_plan, single
from service.db.url import Dialect
from service.errors import ServiceError, ServiceUnavailable, StorageFull

logger = logging.getLogger("service.db")

T = TypeVar("T")
R = TypeVar("R")


class Connection(Protocol):
    async def run(self, plan: Plan[T], *, write: bool = False, scrub: bool = False) -> T: ...

    async def alive(self) -> bool: ...

    async def close(self) -> None: ...


class Database(Protocol):
    """What the store needs of a database; `open_database` picks the implementation."""

    dialect: Dialect
    # Commits happen one at a time, in order: an outbox's seq order is then commit order.
    single_writer: bool
    # How many connections the group committer commits on at once (1 where single_writer).
    writers: int

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def connect(self, name: str) -> Connection: ...

    async def read(self, plan: Plan[T]) -> T: ...

    def fault(self, exc: BaseException) -> ServiceError | None: ...


class _Queued:
    __slots__ = ("future", "job")

    def __init__(self, job: WriteJob[Any], future: asyncio.Future[Any]) -> None:
        self.job = job
        self.future = future


class GroupCommitter:
    """Tasks that each own a write connection and commit queued jobs in batches.

    One task where the database commits one transaction at a time (SQLite). Where it
    takes concurrent ones (PostgreSQL), `database.writers` tasks: the next batch is
    planned and sent while the last one's round trips and commit are under way, rather
    than the service idling on them. Jobs of a `serial` class (they all lock one row,
    a project's secret count) are left to the first task, in batches as large as
    ever: beside it, a second connection would only wait for that lock.
    """

    def __init__(
        self, database: Database, on_events_committed: Callable[[], None], max_batch: int = 256
    ) -> None:
        self._database = database
        self._on_events_committed = on_events_committed
        self._max_batch = max_batch
        # Serial jobs queue apart only where a second task could otherwise take them.
        self._serial: deque[_Queued] = deque()
        self._queue: deque[_Queued] = deque()
        self._apart = database.writers > 1
        # Set when any job is queued (the first task waits on it), and when one any task may take is.
        self._wakeup = asyncio.Event()
        self._wakeup_any = asyncio.Event()
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        # Whether the last write found the storage full (logged once when it starts, once when it ends).
        self.storage_full = False

    async def start(self) -> None:
        for number in range(1, self._database.writers + 1):
            ready = asyncio.Event()
            name = "committer" if number == 1 else f"committer-{number}"
            task = asyncio.create_task(self._run(name, number == 1, ready), name=f"group-{name}")
            self._tasks.append(task)
            waiting = asyncio.create_task(ready.wait())
            done, _ = await asyncio.wait({waiting, task}, return_when=asyncio.FIRST_COMPLETED)
            if task in done:
                waiting.cancel()
                # The connections already made are closed before the failure is raised.
                self._stop_waiting()
                await asyncio.gather(*self._tasks, return_exceptions=True)
                task.result()

    async def stop(self) -> None:
        """Commit what is queued, then close the connections."""
        self._stop_waiting()
        await asyncio.gather(*self._tasks)

    def _stop_waiting(self) -> None:
        self._stopping = True
        self._wakeup.set()
        self._wakeup_any.set()

    async def submit(self, job: WriteJob[R]) -> R:
        if self._stopping:
            raise ServiceUnavailable("The service is shutting down")
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        queued = _Queued(job, future)
        if job.serial and self._apart:
            self._serial.append(queued)
        else:
            self._queue.append(queued)
            self._wakeup_any.set()
        self._wakeup.set()
        return await future

    def _take(self, first: bool) -> list[_Queued]:
        """The next batch: the first task's serial jobs first, then any other (the second task takes those too)."""
        batch: list[_Queued] = []
        for queue in (self._serial, self._queue) if first else (self._queue,):
            batch += [queue.popleft() for _ in range(min(len(queue), self._max_batch - len(batch)))]
        return batch

    async def _run(self, name: str, first: bool, ready: asyncio.Event) -> None:
        backoff = 0.1
        while True:
            try:
                conn = await self._database.connect(name)
            except Exception as exc:
                if not ready.is_set():
                    raise
                logger.warning("the %s could not connect (%s); retrying", name, type(exc).__name__)
            else:
                ready.set()
                backoff = 0.1
                try:
                    if await self._serve(conn, first):
                        return
                finally:
                    await conn.close()
            self._fail_queued(ServiceUnavailable("The database is unavailable; retry shortly"))
            if self._stopping:
                return
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    async def _serve(self, conn: Connection, first: bool) -> bool:
        """Commit batches until stopped (True) or the connection is lost (False)."""
        wakeup = self._wakeup if first else self._wakeup_any
        while True:
            batch = self._take(first)
            if not batch:
                if self._stopping:
                    return True
                wakeup.clear()
                await wakeup.wait()
                continue
            if not await self._commit(conn, batch):
                logger.warning("the committer lost its database connection; reconnecting")
                return False

    async def _commit(self, conn: Connection, batch: list[_Queued]) -> bool:
        """Commit a batch and answer each job; False when the connection was lost."""
        jobs = [queued.job for queued in batch]
        started_at = time.perf_counter()
        try:
            outcomes = await conn.run(
                batch_plan(jobs), write=True, scrub=any(job.scrubs_old_values for job in jobs)
            )
        except Exception as exc:
            if not await conn.alive():
                _answer_all(batch, ServiceUnavailable("The database is unavailable; retry shortly"))
                return False
            if len(batch) > 1:
                for queued in batch:
                    if not await self._commit(conn, [queued]):
                        return False
                return True
            error = self._database.fault(exc)
            if isinstance(error, StorageFull) and not self.storage_full:
                self.storage_full = True
                metrics.STORAGE_FULL.set(1)
                logger.error("the database's storage is full: writes answer 503 until space is freed")
            _answer(batch[0].future, error=error or exc)
            return True
        metrics.COMMIT_SECONDS.observe(time.perf_counter() - started_at)
        metrics.COMMIT_BATCH.observe(len(batch))
        if self.storage_full:
            self.storage_full = False
            metrics.STORAGE_FULL.set(0)
            logger.warning("the database's storage has room again: writes resume")
        if any(job.writes_events for job in jobs):
            self._on_events_committed()
        for queued, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, ServiceError):
                _answer(queued.future, error=outcome)
            else:
                _answer(queued.future, result=outcome)
        return True

    def _fail_queued(self, exc: Exception) -> None:
        batch = [*self._serial, *self._queue]
        self._serial.clear()
        self._queue.clear()
        _answer_all(batch, exc)


def _answer(future: asyncio.Future[Any], result: Any = None, error: BaseException | None = None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _answer_all(batch: list[_Queued], error: Exception) -> None:
    for queued in batch:
        _answer(queued.future, error=error)


class Store:
    """Reads and writes for the rooms above: the committer for writes, the database's reads for the rest."""

    def __init__(self, database: Database, on_events_committed: Callable[[], None] = lambda: None) -> None:
        self.database = database
        self._committer = GroupCommitter(database, on_events_committed)

    @property
    def single_writer(self) -> bool:
        return self.database.single_writer

    async def start(self) -> None:
        await self._committer.start()

    async def stop(self) -> None:
        await self._committer.stop()

    async def write(self, job: WriteJob[R]) -> R:
        return await self._committer.submit(job)

    async def read(self, plan: Plan[T]) -> T:
        try:
            return await self.database.read(plan)
        except ServiceError:
            raise
        except Exception as exc:
            error = self.database.fault(exc)
            if error is None:
                raise
            raise error from None

    async def ping(self) -> None:
        """Whether the database answers (raises ServiceUnavailable when it does not)."""
        await self.fetch(Fetch("SELECT 1"))

    @property
    def storage_full(self) -> bool:
        """Whether the last write found the database's storage full."""
        return self._committer.storage_full

    async def fetch(self, statement: Fetch) -> Sequence[Sequence[Any]]:
        """Rows of one read statement."""
        rows: Sequence[Sequence[Any]] = await self.read(single(statement))
        return rows
