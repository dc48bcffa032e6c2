"""Leases: which replica does a job that only one may do at a time (relaying the outbox).

With a single writer (SQLite) there is one process, and it always holds the lease.
On PostgreSQL the lease is an advisory lock held by a dedicated session: when the
holder dies, its session ends, the lock frees, and another replica takes it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from service.db.plan import Fetch, single
from service.db.store import Connection, Database

logger = logging.getLogger("service.db")


class Lease(Protocol):
    async def held(self) -> bool:
        """Whether this process holds the lease now (taking it if it is free)."""
        ...

    async def release(self) -> None: ...


class SoleLease:
    """The lease of a single-writer database: always this process's."""

    async def held(self) -> bool:
        return True

    async def release(self) -> None:
        pass


class AdvisoryLease:
    """A PostgreSQL advisory lock on a session of its own."""

    def __init__(self, database: Database, lock_id: int, name: str) -> None:
        self._database = database
        self._lock_id = lock_id
        self._name = name
        self._conn: Connection | None = None

    async def held(self) -> bool:
        if self._conn is not None:
            if await self._conn.alive():
                return True
            logger.warning("the %s lease's connection was lost", self._name)
            await self.release()
        try:
            conn = await asyncio.wait_for(self._database.connect(f"{self._name} lease"), 15)
        except Exception as exc:
            logger.warning("the %s lease is unavailable: %s", self._name, type(exc).__name__)
            return False
        try:
            rows = await asyncio.wait_for(
                conn.run(single(Fetch("SELECT pg_try_advisory_lock(?)", (self._lock_id,)))), 5
            )
        except Exception as exc:
            logger.warning("the %s lease is unavailable: %s", self._name, type(exc).__name__)
            await conn.close()
            return False
        if not rows[0][0]:
            await conn.close()
            return False
        logger.info("this replica now holds the %s lease", self._name)
        self._conn = conn
        return True

    async def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()


def lease(database: Database, lock_id: int, name: str) -> Lease:
    """The lease named `name` (lock_id identifies it among the database's advisory locks)."""
    if database.single_writer:
        return SoleLease()
    return AdvisoryLease(database, lock_id, name)
