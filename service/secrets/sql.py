"""Statements on secrets, per-project counts and Idempotency-Key records."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from service.db.plan import Execute, ExecuteMany, Fetch
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
        )
    return Execute(
        "INSERT INTO secrets (id, project_id, name, sealed_value, key_id, created_at, updated_at)"
        f" VALUES {', '.join(['(?, ?, ?, ?, ?, ?, ?)'] * len(rows))}"
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


def get_sealed_value(project_id: str, secret_id: str) -> Fetch:
    return Fetch("SELECT sealed_value FROM secrets WHERE id = ? AND project_id = ?", (secret_id, project_id))


def update_secret_value(
    project_id: str, secret_id: str, sealed: bytes, key_id: str, updated_at: str
) -> Fetch:
    return Fetch(
        "UPDATE secrets SET sealed_value = ?, key_id = ?, updated_at = ?"
        f" WHERE id = ? AND project_id = ? RETURNING {SECRET_COLUMNS}",
        (sealed, key_id, updated_at, secret_id, project_id),
    )


def delete_secret(project_id: str, secret_id: str) -> Fetch:
    return Fetch(
        f"DELETE FROM secrets WHERE id = ? AND project_id = ? RETURNING {SECRET_COLUMNS}",
        (secret_id, project_id),
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


def find_idempotency_claim(project_id: str, key: str) -> Fetch:
    """(fingerprint, response) of the record of this key, if any."""
    return Fetch(
        "SELECT fingerprint, response_body FROM idempotency_keys WHERE project_id = ? AND idempotency_key = ?",
        (project_id, key),
    )


def claim_idempotency_keys(claims: Sequence[IdempotencyClaim]) -> Fetch:
    """Insert the claims; fetches (project_id, key) of those that went in (a key already held is skipped)."""
    return Fetch(
        "INSERT INTO idempotency_keys"
        " (project_id, idempotency_key, fingerprint, status_code, response_body, created_at)"
        f" VALUES {', '.join(['(?, ?, ?, ?, ?, ?)'] * len(claims))}"
        " ON CONFLICT (project_id, idempotency_key) DO NOTHING RETURNING project_id, idempotency_key",
        [
            value
            for c in claims
            for value in (c.project_id, c.key, c.fingerprint, c.status_code, c.response, c.created_at)
        ],
    )


def release_idempotency_keys(pairs: Sequence[tuple[str, str]]) -> ExecuteMany:
    return ExecuteMany("DELETE FROM idempotency_keys WHERE project_id = ? AND idempotency_key = ?", pairs)


def prune_idempotency_keys(before: str) -> Execute:
    return Execute("DELETE FROM idempotency_keys WHERE created_at < ?", (before,))


# Key rotation


def sealed_values_not_under(key_id: str, limit: int) -> Fetch:
    """(id, project_id, name, sealed_value) of values whose data key another master key wraps."""
    return Fetch(
        "SELECT id, project_id, name, sealed_value FROM secrets WHERE key_id <> ? ORDER BY id LIMIT ?",
        (key_id, limit),
    )


def replace_sealed_value(secret_id: str, old_sealed: bytes, sealed: bytes, key_id: str) -> Execute:
    """Swap in a re-wrapped value, unless the value changed meanwhile (compare-and-set on the stored blob)."""
    return Execute(
        "UPDATE secrets SET sealed_value = ?, key_id = ? WHERE id = ? AND sealed_value = ?",
        (sealed, key_id, secret_id, old_sealed),
    )
