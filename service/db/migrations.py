"""Schema migrations, applied in order and recorded in schema_migrations."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime

from service.db.plan import Execute, Fetch, Plan, single
from service.db.store import Database
from service.db.url import Dialect

logger = logging.getLogger("service.db")

# Each migration is a list of statements; {blob}, {serial} and {binary_collation} differ
# per dialect, and a (dialect, statement) pair runs on that dialect only.
Migration = Sequence[str | tuple[Dialect, str]]

MIGRATIONS: list[Migration] = [
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
    # A single writer records relay progress as one cursor row (see events.sql): the
    # relay no longer writes outbox.published_at there, and the partial indexes on it
    # only cost inserts. With concurrent writers (PostgreSQL) each row is marked.
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
    # Scoped API keys (every existing key keeps every scope), and numbered versions of a
    # value: the current one stays in `secrets` (every existing value becomes version 1),
    # the ones it replaced are kept in `secret_versions` until pruned.
    [
        "ALTER TABLE api_keys ADD COLUMN scopes TEXT NOT NULL DEFAULT 'secrets:manage secrets:read secrets:view'",
        "ALTER TABLE secrets ADD COLUMN version INTEGER NOT NULL DEFAULT 1",
        """CREATE TABLE secret_versions (
            secret_id TEXT NOT NULL REFERENCES secrets (id),
            version INTEGER NOT NULL,
            sealed_value {blob} NOT NULL,
            key_id TEXT NOT NULL,
            created_at TEXT NOT NULL,
            PRIMARY KEY (secret_id, version)
        ){without_rowid}""",
    ],
    # Idempotency-Key records belong to the API key that made them (a record is not an oracle
    # for another key of the project), and their fingerprints use a key of their own. Records
    # are kept a day and the old fingerprints cannot be checked any more: they are dropped.
    [
        "DROP TABLE idempotency_keys",
        """CREATE TABLE idempotency_keys (
            project_id TEXT NOT NULL REFERENCES projects (id),
            api_key_id TEXT NOT NULL,
            idempotency_key TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            status_code INTEGER NOT NULL,
            response_body TEXT NOT NULL,
            created_at TEXT NOT NULL,
            PRIMARY KEY (project_id, api_key_id, idempotency_key)
        )""",
    ],
]

_TEMPLATES: dict[Dialect, dict[str, str]] = {
    # Names list in code-point order whatever the server's locale.
    "sqlite": {
        "blob": "BLOB",
        "serial": "INTEGER PRIMARY KEY AUTOINCREMENT",
        "binary_collation": "",
        "without_rowid": " WITHOUT ROWID",
    },
    "postgresql": {
        "blob": "BYTEA",
        "serial": "BIGSERIAL PRIMARY KEY",
        "binary_collation": 'COLLATE "C"',
        "without_rowid": "",
    },
}

# Replicas starting together must not migrate twice.
_MIGRATION_LOCK = 0x5EC7E75


def _apply(version: int, migration: Migration, dialect: Dialect) -> Plan[None]:
    for statement in migration:
        if isinstance(statement, tuple):
            only_on, statement = statement
            if only_on != dialect:
                continue
        yield Execute(statement.format(**_TEMPLATES[dialect]))
    yield Execute(
        "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
        (version, datetime.now(UTC).isoformat()),
    )


async def migrate(database: Database, upto: int | None = None) -> int:
    """Apply pending migrations (through version `upto`, or all); returns how many were applied."""
    conn = await database.connect("migrations")
    try:
        if not database.single_writer:
            await conn.run(single(Fetch("SELECT pg_advisory_lock(?)", (_MIGRATION_LOCK,))))
        try:
            await conn.run(
                single(
                    Execute(
                        "CREATE TABLE IF NOT EXISTS schema_migrations"
                        " (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
                    )
                )
            )
            rows = await conn.run(single(Fetch("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")))
            current = int(rows[0][0])
            applied = 0
            for version, migration in enumerate(MIGRATIONS[:upto], start=1):
                if version <= current:
                    continue
                await conn.run(_apply(version, migration, database.dialect), write=True)
                logger.info("applied migration %d", version)
                applied += 1
            return applied
        finally:
            if not database.single_writer:
                await conn.run(single(Fetch("SELECT pg_advisory_unlock(?)", (_MIGRATION_LOCK,))))
    finally:
        await conn.close()


def schema_version() -> Fetch:
    """The highest migration applied (compare with len(MIGRATIONS))."""
    return Fetch("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
