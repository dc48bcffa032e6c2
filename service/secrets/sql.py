"""Statements on secrets, per-project counts and Idempotency-Key records."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from service.db.plan import Execute, ExecuteMany, Fetch, FetchByKeys, UpdateMany
from service.secrets.model import SECRET_COLUMNS, IdempotencyClaim, SecretRecord

# Secrets


def insert_secrets(rows: Sequence[tuple[SecretRecord, bytes]]) -> Execute:
    """Insert many secrets in one statement; a name already taken in its project is skipped.

    The result is how many went in: all of them is by far the common case, and
    returned rows would each cost SQLite's thread a hand-off of the GIL.
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
            record.version,
        )
    return Execute(
        "INSERT INTO secrets (id, project_id, name, sealed_value, key_id, created_at, updated_at, version)"
        f" VALUES {', '.join(['(?, ?, ?, ?, ?, ?, ?, ?)'] * len(rows))}"
        " ON CONFLICT (project_id, name) DO NOTHING",
        params,
    )


def existing_secret_ids(ids: Sequence[str]) -> Fetch:
    return Fetch(f"SELECT id FROM secrets WHERE id IN ({', '.join('?' * len(ids))})", list(ids))


def list_secrets(project_id: str) -> Fetch:
    return Fetch(f"SELECT {SECRET_COLUMNS} FROM secrets WHERE project_id = ? ORDER BY name", (project_id,))


def get_secret(project_id: str, secret_id: str) -> Fetch:
    return Fetch(
        f"SELECT {SECRET_COLUMNS} FROM secrets WHERE id = ? AND project_id = ?", (secret_id, project_id)
    )


# The columns a locked row is read with before it changes (see lock_secret).
LOCKED_COLUMNS = "version, sealed_value, key_id, name, created_at, updated_at"


def lock_secret(project_id: str, secret_id: str) -> Fetch:
    """The current row, locked until commit (concurrent writers of it queue here): LOCKED_COLUMNS."""
    return Fetch(
        f"SELECT {LOCKED_COLUMNS} FROM secrets WHERE id = ? AND project_id = ?",
        (secret_id, project_id),
        for_update=True,
    )


# The columns many rows are locked with (see lock_secrets): no value, all text or integers.
LOCKED_MANY_COLUMNS = ("id", "project_id", "version", "name", "created_at", "updated_at")


def lock_secrets(secret_ids: Sequence[str]) -> Fetch:
    """The current rows of these secrets (any project's), locked until commit in id order: LOCKED_MANY_COLUMNS."""
    ids = sorted(secret_ids)
    return Fetch(
        f"SELECT {', '.join(LOCKED_MANY_COLUMNS)} FROM secrets WHERE id IN ({', '.join('?' * len(ids))})"
        " ORDER BY id",
        ids,
        for_update=True,
        packed=LOCKED_MANY_COLUMNS,
    )


def keep_current_versions(secret_ids: Sequence[str]) -> Execute:
    """Keep the current values of these secrets as previous versions, copied inside the database."""
    return Execute(
        "INSERT INTO secret_versions (secret_id, version, sealed_value, key_id, created_at)"
        f" SELECT id, version, sealed_value, key_id, updated_at FROM secrets WHERE id IN ({', '.join('?' * len(secret_ids))})",
        list(secret_ids),
    )


def set_values(rows: Sequence[tuple[str, bytes, str, int, str]]) -> UpdateMany:
    """New current values: rows of (id, sealed_value, key_id, version, updated_at), one per secret."""
    return UpdateMany("secrets", "id", ("sealed_value", "key_id", "version", "updated_at"), rows)


def prune_kept_versions(secret_ids: Sequence[str], kept: int) -> Execute:
    """Forget the previous versions of these secrets beyond the last `kept` (their sealed values are scrubbed)."""
    return Execute(
        f"DELETE FROM secret_versions WHERE secret_id IN ({', '.join('?' * len(secret_ids))}) AND version <="
        " (SELECT s.version FROM secrets AS s WHERE s.id = secret_versions.secret_id) - ?",
        [*secret_ids, kept],
    )


def keep_version(secret_id: str, version: int, sealed: bytes, key_id: str, created_at: str) -> Execute:
    """Keep a replaced value as a previous version."""
    return Execute(
        "INSERT INTO secret_versions (secret_id, version, sealed_value, key_id, created_at) VALUES (?, ?, ?, ?, ?)",
        (secret_id, version, sealed, key_id, created_at),
    )


def set_value(secret_id: str, sealed: bytes, key_id: str, version: int, updated_at: str) -> Execute:
    return Execute(
        "UPDATE secrets SET sealed_value = ?, key_id = ?, version = ?, updated_at = ? WHERE id = ?",
        (sealed, key_id, version, updated_at, secret_id),
    )


def prune_versions(secret_id: str, below: int) -> Execute:
    """Forget the previous versions older than `below` (their sealed values are scrubbed)."""
    return Execute("DELETE FROM secret_versions WHERE secret_id = ? AND version < ?", (secret_id, below))


def delete_versions(secret_id: str) -> Execute:
    return Execute("DELETE FROM secret_versions WHERE secret_id = ?", (secret_id,))


def delete_secret(secret_id: str) -> Execute:
    return Execute("DELETE FROM secrets WHERE id = ?", (secret_id,))


# The columns a value is read with: id, name, version, sealed_value, updated_at.


def current_value_by_name(project_id: str, name: str) -> Fetch:
    return Fetch(
        "SELECT id, name, version, sealed_value, updated_at FROM secrets WHERE project_id = ? AND name = ?",
        (project_id, name),
    )


def current_values_by_names(pairs: Sequence[tuple[str, str]]) -> FetchByKeys:
    """The current values of secrets named by (project_id, name) (distinct pairs): project_id, then
    the value columns."""
    return FetchByKeys(
        "secrets",
        ("project_id", "id", "name", "version", "sealed_value", "updated_at"),
        ("project_id", "name"),
        pairs,
    )


def current_value_by_id(project_id: str, secret_id: str) -> Fetch:
    return Fetch(
        "SELECT id, name, version, sealed_value, updated_at FROM secrets WHERE id = ? AND project_id = ?",
        (secret_id, project_id),
    )


def previous_value(secret_id: str, version: int) -> Fetch:
    """A kept previous version: (sealed_value, created_at)."""
    return Fetch(
        "SELECT sealed_value, created_at FROM secret_versions WHERE secret_id = ? AND version = ?",
        (secret_id, version),
    )


def previous_versions(secret_id: str) -> Fetch:
    """(version, created_at) of the kept previous versions, newest first."""
    return Fetch(
        "SELECT version, created_at FROM secret_versions WHERE secret_id = ? ORDER BY version DESC",
        (secret_id,),
    )


# Per-project counts (the quota)


def secret_counts(project_ids: Sequence[str]) -> Fetch:
    """How many secrets each project holds; writers of these projects queue here until commit."""
    marks = ", ".join("?" * len(project_ids))
    return Fetch(
        f"SELECT id, secret_count FROM projects WHERE id IN ({marks}) ORDER BY id",
        sorted(project_ids),
        for_update=True,
    )


def add_to_secret_counts(deltas: Mapping[str, int]) -> ExecuteMany:
    return ExecuteMany(
        "UPDATE projects SET secret_count = secret_count + ? WHERE id = ?",
        [(delta, project_id) for project_id, delta in deltas.items()],
    )


# Idempotency-Key records


def find_idempotency_claim(project_id: str, api_key_id: str, key: str) -> Fetch:
    """(fingerprint, response) of the record of this Idempotency-Key made by this API key, if any."""
    return Fetch(
        "SELECT fingerprint, response_body FROM idempotency_keys"
        " WHERE project_id = ? AND api_key_id = ? AND idempotency_key = ?",
        (project_id, api_key_id, key),
    )


def claim_idempotency_keys(claims: Sequence[IdempotencyClaim]) -> Fetch:
    """Insert the claims; fetches (project_id, api_key_id, key) of those that went in (one already held is skipped)."""
    return Fetch(
        "INSERT INTO idempotency_keys"
        " (project_id, api_key_id, idempotency_key, fingerprint, status_code, response_body, created_at)"
        f" VALUES {', '.join(['(?, ?, ?, ?, ?, ?, ?)'] * len(claims))}"
        " ON CONFLICT (project_id, api_key_id, idempotency_key) DO NOTHING"
        " RETURNING project_id, api_key_id, idempotency_key",
        [
            value
            for c in claims
            for value in (
                c.project_id,
                c.api_key_id,
                c.key,
                c.fingerprint,
                c.status_code,
                c.response,
                c.created_at,
            )
        ],
    )


def release_idempotency_keys(claims: Sequence[tuple[str, str, str]]) -> ExecuteMany:
    """Forget claims given as (project_id, api_key_id, key)."""
    return ExecuteMany(
        "DELETE FROM idempotency_keys WHERE project_id = ? AND api_key_id = ? AND idempotency_key = ?", claims
    )


def prune_idempotency_keys(before: str) -> Execute:
    return Execute("DELETE FROM idempotency_keys WHERE created_at < ?", (before,))


# Key rotation: the current values, then the previous versions, in key order so a pass
# walks each table once (keyset pagination, no index on key_id to slow every create).


def current_values_not_under(key_id: str, after: str, limit: int) -> Fetch:
    """(id, project_id, name, version, sealed_value) of current values another master key wraps."""
    return Fetch(
        "SELECT id, project_id, name, version, sealed_value FROM secrets"
        " WHERE id > ? AND key_id <> ? ORDER BY id LIMIT ?",
        (after, key_id, limit),
    )


def previous_values_not_under(key_id: str, after: tuple[str, int], limit: int) -> Fetch:
    """(secret_id, project_id, name, version, sealed_value) of previous versions another master key wraps."""
    return Fetch(
        "SELECT v.secret_id, s.project_id, s.name, v.version, v.sealed_value"
        " FROM secret_versions v JOIN secrets s ON s.id = v.secret_id"
        " WHERE (v.secret_id > ? OR (v.secret_id = ? AND v.version > ?)) AND v.key_id <> ?"
        " ORDER BY v.secret_id, v.version LIMIT ?",
        (after[0], after[0], after[1], key_id, limit),
    )


def replace_current_value(secret_id: str, old_sealed: bytes, sealed: bytes, key_id: str) -> Execute:
    """Swap in a re-wrapped value, unless the value changed meanwhile (compare-and-set on the stored blob)."""
    return Execute(
        "UPDATE secrets SET sealed_value = ?, key_id = ? WHERE id = ? AND sealed_value = ?",
        (sealed, key_id, secret_id, old_sealed),
    )


def replace_previous_value(
    secret_id: str, version: int, old_sealed: bytes, sealed: bytes, key_id: str
) -> Execute:
    return Execute(
        "UPDATE secret_versions SET sealed_value = ?, key_id = ?"
        " WHERE secret_id = ? AND version = ? AND sealed_value = ?",
        (sealed, key_id, secret_id, version, old_sealed),
    )


def values_per_key_id() -> Fetch:
    """(key_id, how many values it wraps): current values and previous versions together."""
    return Fetch(
        "SELECT key_id, COUNT(*) FROM (SELECT key_id FROM secrets UNION ALL SELECT key_id FROM secret_versions) AS v"
        " GROUP BY key_id ORDER BY key_id"
    )
