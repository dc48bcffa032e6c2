"""PostgreSQL through asyncpg's public API: a pool for reads, dedicated connections for the rest."""

from __future__ import annotations

import functools
import itertools
import re
import ssl
from typing import Any, TypeVar

import asyncpg

from service.db.plan import Execute, Fetch, FetchByKeys, Plan, UpdateMany
from service.db.url import DatabaseTLSError, Dialect
from service.errors import ServiceError, ServiceUnavailable, StorageFull

T = TypeVar("T")

CONNECT_TIMEOUT_SECONDS = 10.0
STATEMENT_TIMEOUT_SECONDS = 30.0
POOL_SIZE = 10


@functools.lru_cache(maxsize=1024)
def numbered(sql: str) -> str:
    """`?` placeholders as asyncpg's `$1, $2, ...`."""
    counter = itertools.count(1)
    return re.sub(r"\?", lambda _: f"${next(counter)}", sql)


async def run_plan(conn: asyncpg.Connection, plan: Plan[T]) -> T:
    """Run a plan on an asyncpg connection, awaiting each statement."""
    result: Any = None
    try:
        while True:
            statement = plan.send(result)
            if isinstance(statement, Fetch):
                sql = statement.sql + " FOR UPDATE" if statement.for_update else statement.sql
                result = await conn.fetch(numbered(sql), *statement.params)
            elif isinstance(statement, FetchByKeys):
                if statement.keys:
                    sql = _joined_keys(statement.table, statement.columns, statement.key)
                    result = await conn.fetch(
                        sql, *(list(column) for column in zip(*statement.keys, strict=True))
                    )
                else:
                    result = []
            elif isinstance(statement, Execute):
                status = await conn.execute(numbered(statement.sql), *statement.params)
                result = int(status.rsplit(" ", 1)[-1]) if status[-1:].isdigit() else 0
            elif isinstance(statement, UpdateMany):
                if statement.rows:
                    await conn.executemany(
                        _update_by_key(statement.table, statement.key, statement.columns),
                        [(*row[1:], row[0]) for row in statement.rows],
                    )
                result = None
            else:
                if statement.rows:
                    await conn.executemany(numbered(statement.sql), statement.rows)
                result = None
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


@functools.lru_cache(maxsize=64)
def _joined_keys(table: str, columns: tuple[str, ...], key: tuple[str, ...]) -> str:
    """The rows whose key is one of those given as one text array per key column."""
    arrays = ", ".join(f"${i + 1}::text[]" for i in range(len(key)))
    on = " AND ".join(f"t.{column} = k.{column}" for column in key)
    selected = ", ".join(f"t.{column}" for column in columns)
    return f"SELECT {selected} FROM {table} AS t JOIN unnest({arrays}) AS k({', '.join(key)}) ON {on}"


@functools.lru_cache(maxsize=64)
def _update_by_key(table: str, key: str, columns: tuple[str, ...]) -> str:
    """One prepared UPDATE, run for every row (the key is its last parameter)."""
    sets = ", ".join(f"{column} = ${i + 1}" for i, column in enumerate(columns))
    return f"UPDATE {table} SET {sets} WHERE {key} = ${len(columns) + 1}"


_CONNECTION_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
)


# OpenSSL's X509_V_ERR_* codes, as ssl.SSLCertVerificationError.verify_code carries them.
_UNTRUSTED = {2, 18, 19, 20, 21, 27}
_NAME_MISMATCH = {62, 64}


def tls_failure(exc: BaseException, dsn: str) -> DatabaseTLSError | None:
    """The clear error for a failed connection attempt, when TLS is what failed (else None)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        detail = exc.verify_message.rstrip(".")
        if exc.verify_code in _UNTRUSTED:
            reason = f"the server's certificate is not trusted by the CA in sslrootcert ({detail})"
        elif exc.verify_code in _NAME_MISMATCH:
            reason = f"host name mismatch ({detail})"
        else:
            reason = f"the server's certificate was rejected ({detail})"
    elif isinstance(exc, ssl.SSLError):
        reason = f"the TLS handshake failed ({exc.reason or type(exc).__name__})"
    elif (
        isinstance(exc, OSError)
        and exc.filename is None
        and "sslrootcert=" in dsn
        and exc.errno in (2, 13, 21)
    ):
        # Raised while loading the CA file (ssl does not say which file): not found, not readable, a directory.
        reason = f"the CA file named by sslrootcert cannot be read ({type(exc).__name__})"
    else:
        return None
    return DatabaseTLSError(f"DATABASE_URL's TLS: {reason}")


def is_connection_error(exc: BaseException) -> bool:
    """A lost or refused connection: the statement may be retried on a new one."""
    return isinstance(exc, _CONNECTION_ERRORS)


def fault(exc: BaseException) -> ServiceError | None:
    """The client's error for a driver exception, when it is one (a retryable condition), else None."""
    if is_connection_error(exc):
        return ServiceUnavailable("The database is unavailable; retry shortly")
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate == "53100":
        return StorageFull()
    # Serialization failure, deadlock, lock not available: the client's to retry.
    if sqlstate in ("40001", "40P01", "55P03"):
        return ServiceUnavailable("The database is busy; retry shortly")
    return None


class PostgresConnection:
    """A dedicated asyncpg connection (the committer's, the relay lease's, a migration's)."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def run(self, plan: Plan[T], *, write: bool = False, scrub: bool = False) -> T:
        """Run a plan; with `write`, inside a transaction that commits at its end.

        `scrub` asks nothing more here: replaced rows stay in dead tuples until VACUUM.
        """
        if not write:
            return await run_plan(self._conn, plan)
        async with self._conn.transaction():
            return await run_plan(self._conn, plan)

    async def alive(self) -> bool:
        if self._conn.is_closed():
            return False
        try:
            await self._conn.fetchval("SELECT 1", timeout=5)
        except Exception:
            return False
        return True

    async def close(self) -> None:
        try:
            await self._conn.close(timeout=5)
        except Exception:
            self._conn.terminate()


class PostgresDatabase:
    """Reads on a pool, writes on the committer's connection; replicas share the server."""

    dialect: Dialect = "postgresql"
    single_writer = False
    # Two committers: one batch's round trips and commit overlap the next one's (measured in issue 15).
    writers = 2

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(
                self._dsn,
                min_size=1,
                max_size=POOL_SIZE,
                timeout=CONNECT_TIMEOUT_SECONDS,
                command_timeout=STATEMENT_TIMEOUT_SECONDS,
            )
        except Exception as exc:
            tls = tls_failure(exc, self._dsn)
            if tls is not None:
                raise tls from None
            if isinstance(exc, asyncpg.PostgresError):
                # The server's words (no such database, authentication failed) never hold the password.
                raise ServiceUnavailable(
                    f"PostgreSQL refused the connection ({exc}); check DATABASE_URL"
                ) from None
            if not is_connection_error(exc):
                raise
            raise ServiceUnavailable(
                f"PostgreSQL cannot be reached ({type(exc).__name__}); check DATABASE_URL"
            ) from None

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await pool.close()
            except Exception:
                pool.terminate()

    async def connect(self, name: str) -> PostgresConnection:
        try:
            conn = await asyncpg.connect(
                self._dsn,
                timeout=CONNECT_TIMEOUT_SECONDS,
                command_timeout=STATEMENT_TIMEOUT_SECONDS,
                server_settings={"application_name": f"secrets-service {name}"},
            )
        except Exception as exc:
            raise tls_failure(exc, self._dsn) or exc from None
        return PostgresConnection(conn)

    async def read(self, plan: Plan[T]) -> T:
        if self._pool is None:
            raise ServiceUnavailable("The database is not open")
        try:
            async with self._pool.acquire(timeout=CONNECT_TIMEOUT_SECONDS) as conn:
                try:
                    return await run_plan(conn, plan)
                except Exception as exc:
                    # A connection the server ended can fail in asyncpg's state machine, not as a
                    # connection error: a closed connection says what happened.
                    if not (is_connection_error(exc) or conn.is_closed()):
                        raise
        except Exception as exc:
            if not is_connection_error(exc):
                raise
        # The pool's idle connections are likely dead too: replace them all.
        await self._pool.expire_connections()
        raise ServiceUnavailable("The database is unavailable; retry shortly") from None

    def fault(self, exc: BaseException) -> ServiceError | None:
        return fault(exc)
