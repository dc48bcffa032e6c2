"""Statements on projects and API keys."""

from __future__ import annotations

from collections.abc import Sequence

from service.db.plan import Execute, Fetch


def insert_project(project_id: str, name: str, created_at: str) -> Execute:
    return Execute(
        "INSERT INTO projects (id, name, created_at) VALUES (?, ?, ?)", (project_id, name, created_at)
    )


def project_exists(project_id: str) -> Fetch:
    return Fetch("SELECT id FROM projects WHERE id = ?", (project_id,))


def insert_api_key(key_id: str, project_id: str, key_hash: str, scopes: str, created_at: str) -> Execute:
    return Execute(
        "INSERT INTO api_keys (id, project_id, key_hash, scopes, created_at) VALUES (?, ?, ?, ?, ?)",
        (key_id, project_id, key_hash, scopes, created_at),
    )


def list_api_keys(project_id: str) -> Fetch:
    """(id, scopes, created_at, revoked_at) of a project's keys, oldest first."""
    return Fetch(
        "SELECT id, scopes, created_at, revoked_at FROM api_keys WHERE project_id = ? ORDER BY created_at, id",
        (project_id,),
    )


def revoke_api_key(key_id: str, revoked_at: str) -> Fetch:
    """Revoke an unrevoked key; fetches its id if it was one."""
    return Fetch(
        "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL RETURNING id",
        (revoked_at, key_id),
    )


def find_active_api_keys(key_hashes: Sequence[str]) -> Fetch:
    """(id, project_id, key_hash, scopes) of the unrevoked keys among these hashes."""
    return Fetch(
        "SELECT id, project_id, key_hash, scopes FROM api_keys"
        f" WHERE key_hash IN ({', '.join('?' * len(key_hashes))}) AND revoked_at IS NULL",
        list(key_hashes),
        packed=("id", "project_id", "key_hash", "scopes"),
    )
