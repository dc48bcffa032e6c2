"""Upgrades: a database written before versions and scopes serves on, every value as its version 1."""

from __future__ import annotations

import base64
import os

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from service.crypto import hash_api_key
from service.db.dialect import open_database
from service.db.migrations import MIGRATIONS, migrate
from service.settings import Settings
from tests.support.app import auth, serving
from tests.support.database import execute, query


def seal_format_1(entry: str, plaintext: str, project_id: str, secret_id: str, name: str) -> bytes:
    """A value as the service sealed it before versions existed (format 1: the row, no version)."""
    key_id, _, encoded = entry.partition(":")
    aad = f"secret/v1\x00{project_id}\x00{secret_id}\x00{name}".encode()
    data_key, nonce, wrap_nonce = os.urandom(32), os.urandom(12), os.urandom(12)
    header = bytes((1, len(key_id))) + key_id.encode()
    wrapped = AESGCM(base64.b64decode(encoded)).encrypt(wrap_nonce, data_key, header + aad)
    return (
        header
        + wrap_nonce
        + wrapped
        + nonce
        + AESGCM(data_key).encrypt(nonce, plaintext.encode(), b"\x01" + aad)
    )


async def test_values_and_keys_from_before_versions_and_scopes_keep_working(settings: Settings) -> None:
    database = open_database(settings.database)
    await database.open()
    try:
        assert await migrate(database, upto=2) == 2
    finally:
        await database.close()
    at = "2026-11-01T00:00:00.000Z"
    api_key = "sk-lw-" + "a" * 48
    secret_id = "018f0000-0000-7000-8000-000000000001"
    sealed = seal_format_1(settings.master_keys.reveal(), "legacy value", "project_old", secret_id, "LEGACY")
    await execute(
        settings,
        "INSERT INTO projects (id, name, secret_count, created_at) VALUES ('project_old', 'old', 1, ?)",
        at,
    )
    await execute(
        settings,
        "INSERT INTO api_keys (id, project_id, key_hash, created_at) VALUES ('key_old', 'project_old', ?, ?)",
        hash_api_key(settings.api_key_hash_key.reveal(), api_key),
        at,
    )
    await execute(
        settings,
        "INSERT INTO secrets (id, project_id, name, sealed_value, key_id, created_at, updated_at)"
        " VALUES (?, 'project_old', 'LEGACY', ?, 'test1', ?, ?)",
        secret_id,
        sealed,
        at,
        at,
    )

    project = {"apiKey": api_key}
    async with serving(settings) as client:  # the lifespan applies the pending migrations
        got = await client.get(f"/api/secrets/{secret_id}", headers=auth(project))
        value = await client.get("/api/secrets/by-name/LEGACY/value", headers=auth(project))
        updated = await client.put(f"/api/secrets/{secret_id}", json={"value": "new"}, headers=auth(project))
        old = await client.get(f"/api/secrets/{secret_id}/value?version=1", headers=auth(project))

    assert got.status_code == 200 and got.json()["version"] == 1
    assert value.status_code == 200, "an old key holds every scope"
    assert (value.json()["value"], value.json()["version"]) == ("legacy value", 1)
    assert updated.json()["version"] == 2
    assert old.json()["value"] == "legacy value", "the format-1 value is kept, and opens, as version 1"
    applied = await query(settings, "SELECT MAX(version) FROM schema_migrations")
    assert applied[0][0] == len(MIGRATIONS)
