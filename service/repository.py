"""SQL for projects, API keys, secrets, the outbox and idempotency records.

Every function takes a connection and runs its statements; none of them commits:
the caller owns the transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from databases.core import Connection


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


def _secret(row: Any) -> SecretRecord:
    return SecretRecord(
        id=row["id"],
        project_id=row["project_id"],
        name=row["name"],
        key_id=row["key_id"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _in_list(prefix: str, items: Sequence[Any]) -> tuple[str, dict[str, Any]]:
    names = [f"{prefix}{i}" for i in range(len(items))]
    return ", ".join(f":{n}" for n in names), dict(zip(names, items, strict=True))


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


async def find_active_api_key(conn: Connection, key_hash: str) -> Mapping[str, Any] | None:
    row = await conn.fetch_one(
        "SELECT id, project_id, key_hash FROM api_keys WHERE key_hash = :key_hash AND revoked_at IS NULL",
        {"key_hash": key_hash},
    )
    return None if row is None else dict(row._mapping)


async def secret_counts(conn: Connection, project_ids: Sequence[str], lock: bool) -> dict[str, int]:
    """How many secrets each project holds; with lock (PostgreSQL), writers of these projects queue here."""
    placeholders, values = _in_list("p", sorted(project_ids))
    rows = await conn.fetch_all(
        f"SELECT id, secret_count FROM projects WHERE id IN ({placeholders}) ORDER BY id"
        + (" FOR UPDATE" if lock else ""),
        values,
    )
    return {row["id"]: row["secret_count"] for row in rows}


async def add_to_secret_count(conn: Connection, project_id: str, delta: int) -> None:
    await conn.execute(
        "UPDATE projects SET secret_count = secret_count + :delta WHERE id = :id",
        {"delta": delta, "id": project_id},
    )


async def insert_secrets(conn: Connection, rows: Sequence[tuple[SecretRecord, bytes]]) -> set[str]:
    """Insert many secrets in one statement; returns the ids that went in (the rest exist already)."""
    if not rows:
        return set()
    tuples = []
    values: dict[str, Any] = {}
    for i, (record, sealed) in enumerate(rows):
        tuples.append(f"(:i{i}, :p{i}, :n{i}, :v{i}, :k{i}, :c{i}, :u{i})")
        values.update(
            {
                f"i{i}": record.id,
                f"p{i}": record.project_id,
                f"n{i}": record.name,
                f"v{i}": sealed,
                f"k{i}": record.key_id,
                f"c{i}": record.created_at,
                f"u{i}": record.updated_at,
            }
        )
    inserted = await conn.fetch_all(
        "INSERT INTO secrets (id, project_id, name, sealed_value, key_id, created_at, updated_at)"
        f" VALUES {', '.join(tuples)} ON CONFLICT (project_id, name) DO NOTHING RETURNING id",
        values,
    )
    return {row["id"] for row in inserted}


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


async def update_secret_value(
    conn: Connection, project_id: str, secret_id: str, sealed: bytes, key_id: str, updated_at: str
) -> SecretRecord | None:
    row = await conn.fetch_one(
        "UPDATE secrets SET sealed_value = :sealed, key_id = :key_id, updated_at = :updated_at"
        f" WHERE id = :id AND project_id = :project_id RETURNING {_SECRET_COLUMNS}",
        {
            "sealed": sealed,
            "key_id": key_id,
            "updated_at": updated_at,
            "id": secret_id,
            "project_id": project_id,
        },
    )
    return None if row is None else _secret(row)


async def delete_secret(conn: Connection, project_id: str, secret_id: str) -> SecretRecord | None:
    row = await conn.fetch_one(
        f"DELETE FROM secrets WHERE id = :id AND project_id = :project_id RETURNING {_SECRET_COLUMNS}",
        {"id": secret_id, "project_id": project_id},
    )
    return None if row is None else _secret(row)


# Outbox


async def insert_events(conn: Connection, events: Sequence[OutboxEvent]) -> None:
    if not events:
        return
    tuples = []
    values: dict[str, Any] = {}
    for i, event in enumerate(events):
        tuples.append(f"(:e{i}, :t{i}, :s{i}, :p{i}, :c{i})")
        values.update(
            {
                f"e{i}": event.event_id,
                f"t{i}": event.event_type,
                f"s{i}": event.subject,
                f"p{i}": event.payload,
                f"c{i}": event.created_at,
            }
        )
    await conn.execute(
        f"INSERT INTO outbox (event_id, event_type, subject, payload, created_at) VALUES {', '.join(tuples)}",
        values,
    )


async def pending_events(conn: Connection, limit: int) -> list[OutboxEvent]:
    rows = await conn.fetch_all(
        "SELECT seq, event_id, event_type, subject, payload, created_at FROM outbox"
        " WHERE published_at IS NULL ORDER BY seq LIMIT :limit",
        {"limit": limit},
    )
    return [
        OutboxEvent(
            seq=row["seq"],
            event_id=row["event_id"],
            event_type=row["event_type"],
            subject=row["subject"],
            payload=row["payload"],
            created_at=row["created_at"],
        )
        for row in rows
    ]


async def mark_published(conn: Connection, seqs: Iterable[int], published_at: str) -> None:
    placeholders, values = _in_list("s", list(seqs))
    if not values:
        return
    await conn.execute(
        f"UPDATE outbox SET published_at = :at WHERE seq IN ({placeholders})",
        {**values, "at": published_at},
    )


async def prune_published(conn: Connection, before: str) -> int:
    result: int = await conn.execute(
        "DELETE FROM outbox WHERE published_at IS NOT NULL AND published_at < :before",
        {"before": before},
    )
    return result


# Idempotency


async def find_idempotent_response(conn: Connection, project_id: str, key: str) -> Mapping[str, Any] | None:
    row = await conn.fetch_one(
        "SELECT fingerprint, status_code, response_body FROM idempotency_keys"
        " WHERE project_id = :project_id AND idempotency_key = :key",
        {"project_id": project_id, "key": key},
    )
    return None if row is None else dict(row._mapping)


async def claim_idempotency_keys(
    conn: Connection, claims: Sequence[tuple[str, str, str, int, str, str]]
) -> set[tuple[str, str]]:
    """Insert (project_id, key, fingerprint, status, body, created_at) rows; returns the pairs that went in."""
    if not claims:
        return set()
    tuples = []
    values: dict[str, Any] = {}
    for i, (project_id, key, fingerprint, status, body, created_at) in enumerate(claims):
        tuples.append(f"(:p{i}, :k{i}, :f{i}, :s{i}, :b{i}, :c{i})")
        values.update(
            {
                f"p{i}": project_id,
                f"k{i}": key,
                f"f{i}": fingerprint,
                f"s{i}": status,
                f"b{i}": body,
                f"c{i}": created_at,
            }
        )
    rows = await conn.fetch_all(
        "INSERT INTO idempotency_keys"
        " (project_id, idempotency_key, fingerprint, status_code, response_body, created_at)"
        f" VALUES {', '.join(tuples)} ON CONFLICT (project_id, idempotency_key) DO NOTHING"
        " RETURNING project_id, idempotency_key",
        values,
    )
    return {(row["project_id"], row["idempotency_key"]) for row in rows}


async def release_idempotency_keys(conn: Connection, pairs: Sequence[tuple[str, str]]) -> None:
    for project_id, key in pairs:
        await conn.execute(
            "DELETE FROM idempotency_keys WHERE project_id = :p AND idempotency_key = :k",
            {"p": project_id, "k": key},
        )


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
