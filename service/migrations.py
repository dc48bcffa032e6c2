"""Schema migrations, applied in order and recorded in schema_migrations."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from databases import Database

logger = logging.getLogger("service.migrations")

# Each migration is a list of statements; {blob} and {serial} differ per dialect, and a
# (dialect, statement) pair runs on that dialect only.
MIGRATIONS: list[list[str | tuple[str, str]]] = [
    [
        """CREATE TABLE projects (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            secret_count INTEGER NOT NULL DEFAULT 0,
            created_at TEXT NOT NULL
        )""",
        """CREATE TABLE api_keys (
            id TEXT PRIMARY KEY,
            project_id TEXT NOT NULL REFERENCES projects (id),
            key_hash TEXT NOT NULL UNIQUE,
            created_at TEXT NOT NULL,
            revoked_at TEXT
        )""",
        """CREATE TABLE secrets (
            id TEXT PRIMARY KEY,
            project_id TEXT NOT NULL REFERENCES projects (id),
            name TEXT {binary_collation} NOT NULL,
            sealed_value {blob} NOT NULL,
            key_id TEXT NOT NULL,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            CONSTRAINT secrets_project_name UNIQUE (project_id, name)
        )""",
        """CREATE TABLE outbox (
            seq {serial},
            event_id TEXT NOT NULL UNIQUE,
            event_type TEXT NOT NULL,
            subject TEXT NOT NULL,
            payload TEXT NOT NULL,
            created_at TEXT NOT NULL,
            published_at TEXT
        )""",
        "CREATE INDEX outbox_pending ON outbox (seq) WHERE published_at IS NULL",
        "CREATE INDEX outbox_published ON outbox (published_at) WHERE published_at IS NOT NULL",
        """CREATE TABLE idempotency_keys (
            project_id TEXT NOT NULL REFERENCES projects (id),
            idempotency_key TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            status_code INTEGER NOT NULL,
            response_body TEXT NOT NULL,
            created_at TEXT NOT NULL,
            PRIMARY KEY (project_id, idempotency_key)
        )""",
    ],
    # SQLite: relay progress as one cursor row (see repository). The relay no longer
    # writes outbox.published_at there, and the partial indexes on it only cost inserts.
    [
        (
            "sqlite",
            "CREATE TABLE relay_progress (id INTEGER PRIMARY KEY CHECK (id = 1), published_seq INTEGER NOT NULL)",
        ),
        (
            "sqlite",
            "INSERT INTO relay_progress (id, published_seq) VALUES (1, COALESCE("
            "(SELECT MIN(seq) - 1 FROM outbox WHERE published_at IS NULL), (SELECT MAX(seq) FROM outbox), 0))",
        ),
        ("sqlite", "DROP INDEX outbox_pending"),
        ("sqlite", "DROP INDEX outbox_published"),
    ],
]

_DIALECT = {
    # Names list in code-point order whatever the server's locale.
    "sqlite": {"blob": "BLOB", "serial": "INTEGER PRIMARY KEY AUTOINCREMENT", "binary_collation": ""},
    "postgresql": {"blob": "BYTEA", "serial": "BIGSERIAL PRIMARY KEY", "binary_collation": 'COLLATE "C"'},
}

# Replicas starting together must not migrate twice.
_PG_MIGRATION_LOCK = 0x5EC7E75


async def migrate(database: Database) -> int:
    """Apply pending migrations; returns how many were applied."""
    dialect = database.url.dialect
    async with database.connection() as conn:
        if dialect == "postgresql":
            await conn.execute(f"SELECT pg_advisory_lock({_PG_MIGRATION_LOCK})")
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
            )
            current = await conn.fetch_val("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
            applied = 0
            for version, statements in enumerate(MIGRATIONS, start=1):
                if version <= current:
                    continue
                async with conn.transaction():
                    for statement in statements:
                        if isinstance(statement, tuple):
                            only_on, statement = statement
                            if only_on != dialect:
                                continue
                        await conn.execute(statement.format(**_DIALECT[dialect]))
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, applied_at) VALUES (:v, :at)",
                        {"v": version, "at": datetime.now(UTC).isoformat()},
                    )
                logger.info("applied migration %d", version)
                applied += 1
            return applied
        finally:
            if dialect == "postgresql":
                await conn.execute(f"SELECT pg_advisory_unlock({_PG_MIGRATION_LOCK})")
