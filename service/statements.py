"""Write statements as data, and the two ways of running a plan of them.

A write job describes its work as a plan: a generator that yields statements and
receives their results. The group committer runs a whole batch of plans in one
transaction: on SQLite synchronously, in one hop to the connection's thread (each
hop costs a GIL hand-off, which under load dominated the commit time); on
PostgreSQL on the event loop through asyncpg. Statements use `?` placeholders.
"""

from __future__ import annotations

import functools
import itertools
import re
import sqlite3
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Fetch:
    """Run a statement and receive its rows (tuples)."""

    sql: str
    params: Sequence[Any]


@dataclass(frozen=True, slots=True)
class Execute:
    """Run a statement and receive how many rows it changed."""

    sql: str
    params: Sequence[Any]


@dataclass(frozen=True, slots=True)
class ExecuteMany:
    """Run a statement once per row of parameters; receives None."""

    sql: str
    rows: Sequence[Sequence[Any]]


Statement = Fetch | Execute | ExecuteMany
Plan = Generator[Statement, Any, T]


def run_sqlite(db: sqlite3.Connection, plan: Plan[T]) -> T:
    result: Any = None
    try:
        while True:
            statement = plan.send(result)
            if isinstance(statement, Fetch):
                result = db.execute(statement.sql, statement.params).fetchall()
            elif isinstance(statement, Execute):
                result = db.execute(statement.sql, statement.params).rowcount
            else:
                if statement.rows:
                    db.executemany(statement.sql, statement.rows)
                result = None
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


async def run_postgres(conn: Any, plan: Plan[T]) -> T:
    """Run a plan on an asyncpg connection."""
    result: Any = None
    try:
        while True:
            statement = plan.send(result)
            if isinstance(statement, Fetch):
                result = await conn.fetch(_numbered(statement.sql), *statement.params)
            elif isinstance(statement, Execute):
                status = await conn.execute(_numbered(statement.sql), *statement.params)
                result = int(status.rsplit(" ", 1)[-1]) if status[-1:].isdigit() else 0
            else:
                if statement.rows:
                    await conn.executemany(_numbered(statement.sql), statement.rows)
                result = None
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


async def fetch_rows(conn: Any, statement: Fetch) -> Sequence[Sequence[Any]]:
    """Run one read statement on a `databases` connection's driver connection."""
    raw = conn.raw_connection
    if conn._database.url.dialect == "postgresql":
        rows: Sequence[Sequence[Any]] = await raw.fetch(_numbered(statement.sql), *statement.params)
        return rows
    return await raw.execute_fetchall(statement.sql, statement.params)  # type: ignore[no-any-return]


@functools.lru_cache(maxsize=1024)
def _numbered(sql: str) -> str:
    """`?` placeholders as asyncpg's `$1, $2, ...`."""
    counter = itertools.count(1)
    return re.sub(r"\?", lambda _: f"${next(counter)}", sql)
