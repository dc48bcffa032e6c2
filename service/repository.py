"""SQL for projects, API keys, secrets, the outbox and idempotency records.

Reads take a connection and run their query through `databases`. Writes are
statements (Fetch, Execute, ExecuteMany) that the group committer runs inside its
transaction; nothing here commits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from databases.core import Connection

from service.statements import Execute, ExecuteMany, Fetch


@dataclass(frozen=True, slots=True)
class SecretRecord:
    """A secret's metadata: everything about it that may leave the service."""

    id: str
    project_id: str
    name: str
    key_id: str
    created_at: str
    updated_at: str

    def to_json(self) -> dict[str, str]:
        return {
            "id": self.id,
            "projectId": self.project_id,
            "name": self.name,
            "createdAt": self.created_at,
            "updatedAt": self.updated_at,
        }


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    event_id: str
    event_type: str
    subject: str
    payload: str
    created_at: str
    seq: int = 0


_SECRET_COLUMNS = "id, project_id, name, key_id, created_at, updated_at"


def secret_from_row(row: Sequence[Any]) -> SecretRecord:
    """A SecretRecord from a positional row of _SECRET_COLUMNS."""
    return SecretRecord(*row)


def _secret(row: Any) -> SecretRecord:
    return SecretRecord(**row._mapping)


# Projects and API keys


async def insert_project(conn: Connection, project_id: str, name: str, created_at: str) -> None:
    await conn.execute(
        "INSERT INTO projects (id, name, created_at) VALUES (:id, :name, :created_at)",
        {"id": project_id, "name": name, "created_at": created_at},
    )


async def insert_api_key(
    conn: Connection, key_id: str, project_id: str, key_hash: str, created_at: str
) -> None:
    await conn.execute(
        "INSERT INTO api_keys (id, project_id, key_hash, created_at)"
        " VALUES (:id, :project_id, :key_hash, :created_at)",
        {"id": key_id, "project_id": project_id, "key_hash": key_hash, "created_at": created_at},
    )


async def revoke_api_key(conn: Connection, key_id: str, revoked_at: str) -> bool:
    rows = await conn.fetch_all(
        "UPDATE api_keys SET revoked_at = :at WHERE id = :id AND revoked_at IS NULL RETURNING id",
        {"id": key_id, "at": revoked_at},
    )
    return bool(rows)


def find_active_api_key(key_hash: str) -> Fetch:
    """(id, project_id, key_hash) of the unrevoked key with this hash, if any."""
    return Fetch(
        "SELECT id, project_id, key_hash FROM api_keys WHERE key_hash = ? AND revoked_at IS NULL", [key_hash]
    )


def secret_counts(project_ids: Sequence[str], lock: bool) -> Fetch:
    """How many secrets each project holds; with lock (PostgreSQL), writers of these projects queue here."""
    marks = ", ".join("?" * len(project_ids))
    return Fetch(
        f"SELECT id, secret_count FROM projects WHERE id IN ({marks}) ORDER BY id"
        + (" FOR UPDATE" if lock else ""),
        sorted(project_ids),
    )


def add_to_secret_counts(deltas: Mapping[str, int]) -> ExecuteMany:
    return ExecuteMany(
        "UPDATE projects SET secret_count = secret_count + ? WHERE id = ?",
        [(delta, project_id) for project_id, delta in deltas.items()],
    )


# Secrets


def insert_secrets(rows: Sequence[tuple[SecretRecord, bytes]], returning: bool) -> Fetch | Execute:
    """Insert many secrets in one statement; a name already taken in its project is skipped.

    With returning (PostgreSQL), the ids that went in come back. Without (SQLite), the
    result is how many went in: returned rows would each cost the connection's thread a
    hand-off of the GIL, and all of them going in is by far the common case.
    """
    params: list[Any] = []
    for record, sealed in rows:
        params += (
            record.id,
            record.project_id,
            record.name,
            sealed,
            record.key_id,
            record.created_at,
            record.updated_at,
        )
    sql = (
        "INSERT INTO secrets (id, project_id, name, sealed_value, key_id, created_at, updated_at)"
        f" VALUES {', '.join(['(?, ?, ?, ?, ?, ?, ?)'] * len(rows))}"
        " ON CONFLICT (project_id, name) DO NOTHING"
    )
    return Fetch(sql + " RETURNING id", params) if returning else Execute(sql, params)


def existing_secret_ids(ids: Sequence[str]) -> Fetch:
    return Fetch(f"SELECT id FROM secrets WHERE id IN ({', '.join('?' * len(ids))})", list(ids))


async def list_secrets(conn: Connection, project_id: str) -> list[SecretRecord]:
    rows = await conn.fetch_all(
        f"SELECT {_SECRET_COLUMNS} FROM secrets WHERE project_id = :project_id ORDER BY name",
        {"project_id": project_id},
    )
    return [_secret(row) for row in rows]


async def get_secret(conn: Connection, project_id: str, secret_id: str) -> SecretRecord | None:
    row = await conn.fetch_one(
        f"SELECT {_SECRET_COLUMNS} FROM secrets WHERE id = :id AND project_id = :project_id",
        {"id": secret_id, "project_id": project_id},
    )
    return None if row is None else _secret(row)


async def get_sealed_value(conn: Connection, project_id: str, secret_id: str) -> bytes | None:
    row = await conn.fetch_one(
        "SELECT sealed_value FROM secrets WHERE id = :id AND project_id = :project_id",
        {"id": secret_id, "project_id": project_id},
    )
    return None if row is None else bytes(row["sealed_value"])


def update_secret_value(
    project_id: str, secret_id: str, sealed: bytes, key_id: str, updated_at: str
) -> Fetch:
    return Fetch(
        "UPDATE secrets SET sealed_value = ?, key_id = ?, updated_at = ?"
        f" WHERE id = ? AND project_id = ? RETURNING {_SECRET_COLUMNS}",
        (sealed, key_id, updated_at, secret_id, project_id),
    )


def delete_secret(project_id: str, secret_id: str) -> Fetch:
    return Fetch(
        f"DELETE FROM secrets WHERE id = ? AND project_id = ? RETURNING {_SECRET_COLUMNS}",
        (secret_id, project_id),
    )


# Outbox


def insert_events(events: Sequence[OutboxEvent]) -> Execute:
    return Execute(
        "INSERT INTO outbox (event_id, event_type, subject, payload, created_at)"
        f" VALUES {', '.join(['(?, ?, ?, ?, ?)'] * len(events))}",
        [value for e in events for value in (e.event_id, e.event_type, e.subject, e.payload, e.created_at)],
    )


_EVENT_COLUMNS = "seq, event_id, event_type, subject, payload, created_at"

# Which outbox rows are published is kept per dialect. SQLite has one writer, so seq
# order is commit order and one cursor row (relay_progress) says how far the relay
# got: publishing writes one small row, not every published row again. On PostgreSQL
# replicas commit concurrently, out of seq order, so each row is marked instead.


def unmarked_events(limit: int) -> Fetch:
    """PostgreSQL: unpublished events in seq order, rows of (seq, event_id, event_type, subject, payload, created_at)."""
    return Fetch(
        f"SELECT {_EVENT_COLUMNS} FROM outbox WHERE published_at IS NULL ORDER BY seq LIMIT ?", (limit,)
    )


def mark_published(seqs: Sequence[int], published_at: str) -> Execute:
    # One statement for the whole round, not one per row.
    return Execute(
        f"UPDATE outbox SET published_at = ? WHERE seq IN ({', '.join('?' * len(seqs))})",
        (published_at, *seqs),
    )


def prune_marked(before: str, limit: int) -> Execute:
    """PostgreSQL: delete up to `limit` of the events published before `before`."""
    return Execute(
        "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox"
        " WHERE published_at IS NOT NULL AND published_at < ? ORDER BY published_at LIMIT ?)",
        (before, limit),
    )


def published_through() -> Fetch:
    """SQLite: the seq up to which every event is published."""
    return Fetch("SELECT published_seq FROM relay_progress WHERE id = 1", ())


def events_after(seq: int, limit: int) -> Fetch:
    """SQLite: events committed after seq, in commit order, as one row holding a JSON array of
    [seq, event_id, event_type, subject, payload, created_at] (one row: one GIL hand-off, not one per event)."""
    return Fetch(
        "SELECT json_group_array(json_array(seq, event_id, event_type, subject, payload, created_at))"
        f" FROM (SELECT {_EVENT_COLUMNS} FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?)",
        (seq, limit),
    )


def advance_published_through(seq: int) -> Execute:
    return Execute("UPDATE relay_progress SET published_seq = MAX(published_seq, ?) WHERE id = 1", (seq,))


def prune_published_through(before: str, limit: int) -> Execute:
    """SQLite: delete up to `limit` of the oldest published events created before `before`.

    Walks the oldest rows by seq only (seq order is creation order, give or take a
    request's milliseconds), so a prune with nothing to do costs almost nothing.
    """
    return Execute(
        "DELETE FROM outbox WHERE seq <= ("
        " SELECT MIN(MAX(oldest.seq), (SELECT published_seq FROM relay_progress WHERE id = 1))"
        " FROM (SELECT seq, created_at FROM outbox ORDER BY seq LIMIT ?) AS oldest"
        " WHERE oldest.created_at < ?)",
        (limit, before),
    )


def count_unpublished(dialect: str) -> Fetch:
    """How many committed events the relay has yet to publish (for operators and tests)."""
    if dialect == "sqlite":
        return Fetch("SELECT COUNT(*) FROM outbox WHERE seq > (SELECT published_seq FROM relay_progress)", ())
    return Fetch("SELECT COUNT(*) FROM outbox WHERE published_at IS NULL", ())


def prune_idempotency_keys(before: str) -> Execute:
    return Execute("DELETE FROM idempotency_keys WHERE created_at < ?", (before,))


# Idempotency


async def find_idempotent_response(conn: Connection, project_id: str, key: str) -> Mapping[str, Any] | None:
    row = await conn.fetch_one(
        "SELECT fingerprint, status_code, response_body FROM idempotency_keys"
        " WHERE project_id = :project_id AND idempotency_key = :key",
        {"project_id": project_id, "key": key},
    )
    return None if row is None else dict(row._mapping)


def claim_idempotency_keys(claims: Sequence[tuple[str, str, str, int, str, str]]) -> Fetch:
    """Insert (project_id, key, fingerprint, status, body, created_at) rows; fetches the pairs that went in."""
    return Fetch(
        "INSERT INTO idempotency_keys"
        " (project_id, idempotency_key, fingerprint, status_code, response_body, created_at)"
        f" VALUES {', '.join(['(?, ?, ?, ?, ?, ?)'] * len(claims))}"
        " ON CONFLICT (project_id, idempotency_key) DO NOTHING RETURNING project_id, idempotency_key",
        [value for claim in claims for value in claim],
    )


def release_idempotency_keys(pairs: Sequence[tuple[str, str]]) -> ExecuteMany:
    return ExecuteMany("DELETE FROM idempotency_keys WHERE project_id = ? AND idempotency_key = ?", pairs)


# Key rotation


async def sealed_values_not_under(conn: Connection, key_id: str, limit: int) -> list[Mapping[str, Any]]:
    rows = await conn.fetch_all(
        "SELECT id, project_id, name, key_id, sealed_value FROM secrets WHERE key_id <> :key_id ORDER BY id LIMIT :limit",
        {"key_id": key_id, "limit": limit},
    )
    return [dict(row._mapping) for row in rows]


async def replace_sealed_value(
    conn: Connection, secret_id: str, old_key_id: str, sealed: bytes, key_id: str
) -> None:
    """Swap in a re-wrapped value, unless the secret changed meanwhile (then it is already under a newer key)."""
    await conn.execute(
        "UPDATE secrets SET sealed_value = :sealed, key_id = :key_id WHERE id = :id AND key_id = :old_key_id",
        {"sealed": sealed, "key_id": key_id, "id": secret_id, "old_key_id": old_key_id},
    )
