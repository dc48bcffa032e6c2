"""Which database a DATABASE_URL names, and how each driver is given it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from service.errors import ServiceUnavailable

Dialect = Literal["sqlite", "postgresql"]


class DatabaseTLSError(ServiceUnavailable):
    """DATABASE_URL asks for TLS that cannot be set up or verified; the message says why, never the password.

    Raised when a connection is opened (startup, reconnects), never to a client: requests
    that find the database unreachable get the generic 503.
    """


_SCHEMES: dict[str, Dialect] = {
    "sqlite": "sqlite",
    "sqlite+aiosqlite": "sqlite",
    "postgresql": "postgresql",
    "postgresql+asyncpg": "postgresql",
    "postgres": "postgresql",
}


@dataclass(frozen=True)
class DatabaseURL:
    """A parsed DATABASE_URL: `sqlite:///relative/path.db`, `sqlite:////absolute/path.db` or
    `postgresql+asyncpg://user:password@host:port/database?sslmode=verify-full&sslrootcert=ca.pem`."""

    url: str
    dialect: Dialect

    @classmethod
    def parse(cls, url: str) -> DatabaseURL:
        scheme = url.partition("://")[0].lower()
        dialect = _SCHEMES.get(scheme)
        if dialect is None or "://" not in url:
            raise ValueError("must be a sqlite:// or postgresql+asyncpg:// URL")
        parsed = cls(url, dialect)
        if dialect == "sqlite" and not parsed.sqlite_path.name:
            raise ValueError("must name a database file (sqlite:///path/to/file.db)")
        if dialect == "postgresql" and not parsed.database_name:
            raise ValueError("must name a database (postgresql+asyncpg://user@host:5432/name)")
        return parsed

    @property
    def sqlite_path(self) -> Path:
        """The database file: what follows `sqlite:///`, so four slashes make it absolute."""
        return Path(self.url.partition("://")[2][1:].partition("?")[0])

    @property
    def database_name(self) -> str:
        return urlsplit(self.url).path.lstrip("/")

    @property
    def postgres_dsn(self) -> str:
        """The URL as asyncpg reads it (its query carries sslmode, sslrootcert, ...)."""
        return "postgresql://" + self.url.partition("://")[2]

    @property
    def for_logs(self) -> str:
        """The URL with its password obscured."""
        parts = urlsplit(self.url)
        if parts.password is None:
            return self.url
        netloc = parts.netloc.rpartition("@")
        user = netloc[0].partition(":")[0]
        return urlunsplit(
            (parts.scheme, f"{user}:********@{netloc[2]}", parts.path, parts.query, parts.fragment)
        )

    def with_database(self, name: str) -> DatabaseURL:
        """The same server, another database (tests and tools make throwaway ones)."""
        parts = urlsplit(self.url)
        return DatabaseURL(
            urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment)), self.dialect
        )
