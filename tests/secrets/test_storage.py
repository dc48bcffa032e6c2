"""What lands in the database: sealed values bound to their row, and nothing in plaintext."""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import pytest

from service.crypto import (
    Binding,
    DecryptionError,
    Keyring,
    generate_master_key_entry,
    sealed_key_id,
    unseal,
)
from service.db.dialect import open_store
from service.secrets.rotation import rewrap_all
from service.settings import Secret, Settings
from tests.support.app import auth
from tests.support.database import is_sqlite, query, traceless
from tests.support.leaks import CANARY


async def _stored(settings: Settings, project_id: str, secret_id: str) -> bytes:
    rows = await query(
        settings, "SELECT sealed_value FROM secrets WHERE id = ? AND project_id = ?", secret_id, project_id
    )
    assert rows
    return bytes(rows[0][0])


async def _rewrap(settings: Settings) -> int:
    async with open_store(settings.database) as store:
        done = await rewrap_all(store, Keyring.parse(settings.master_keys.reveal()))
    assert done.remaining == {}, "every value is under the primary key after a rewrap"
    return done.rewrapped


async def test_stored_value_opens_only_for_its_row(
    client: httpx.AsyncClient, settings: Settings, project: dict[str, str]
) -> None:
    created = (
        await client.post(
            "/api/secrets", json={"name": "DB_PASSWORD", "value": CANARY}, headers=auth(project)
        )
    ).json()
    sealed = await _stored(settings, project["projectId"], created["id"])
    keyring = Keyring.parse(settings.master_keys.reveal())

    assert sealed[0] == 2, "format version"
    assert sealed_key_id(sealed) == "test1"
    assert CANARY.encode() not in sealed
    assert unseal(keyring, sealed, Binding(project["projectId"], created["id"], "DB_PASSWORD", 1)) == CANARY
    with pytest.raises(DecryptionError):
        unseal(keyring, sealed, Binding("project_other", created["id"], "DB_PASSWORD", 1))
    with pytest.raises(DecryptionError):
        unseal(keyring, sealed, Binding(project["projectId"], created["id"], "OTHER_NAME", 1))
    other_keyring = Keyring.parse(generate_master_key_entry("test1"))
    with pytest.raises(DecryptionError):
        unseal(other_keyring, sealed, Binding(project["projectId"], created["id"], "DB_PASSWORD", 1))


async def test_canary_appears_nowhere_in_plaintext(
    client: httpx.AsyncClient,
    settings: Settings,
    project: dict[str, str],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    if not is_sqlite(settings):
        pytest.skip("inspects the SQLite files")
    caplog.set_level("DEBUG")
    responses = [
        await client.post(
            "/api/secrets", json={"name": f"CANARY_{i}", "value": CANARY}, headers=auth(project)
        )
        for i in range(5)
    ]
    responses.append(
        await client.post("/api/secrets", json={"name": "CANARY_0", "value": CANARY}, headers=auth(project))
    )
    responses.append(
        await client.post("/api/secrets", json={"name": "bad name", "value": CANARY}, headers=auth(project))
    )
    responses.append(await client.get("/api/secrets", headers=auth(project)))
    assert [r.status_code for r in responses] == [201] * 5 + [409, 422, 200]
    for response in responses:
        assert CANARY not in response.text
        assert CANARY not in str(response.headers)
    files = list(tmp_path.glob("secrets.db*"))
    assert any(f.name.endswith("-wal") for f in files), files
    for path in files:
        data = path.read_bytes()
        assert CANARY.encode() not in data, path.name
        assert base64.b64encode(CANARY.encode()) not in data
    assert CANARY not in caplog.text


async def test_deleted_ciphertext_is_gone_from_the_file(
    client: httpx.AsyncClient, settings: Settings, project: dict[str, str], tmp_path: Path
) -> None:
    if not is_sqlite(settings):
        pytest.skip("inspects the SQLite files")
    created = (
        await client.post("/api/secrets", json={"name": "GONE", "value": "v" * 500}, headers=auth(project))
    ).json()
    sealed = await _stored(settings, project["projectId"], created["id"])
    assert (await client.delete(f"/api/secrets/{created['id']}", headers=auth(project))).status_code == 200
    await traceless(tmp_path, sealed[-64:])


async def test_rotating_the_master_key_keeps_every_value_readable(
    client: httpx.AsyncClient, settings: Settings, project: dict[str, str]
) -> None:
    from dataclasses import replace

    ids = []
    for i in range(3):
        response = await client.post(
            "/api/secrets", json={"name": f"ROT_{i}", "value": f"value-{i}"}, headers=auth(project)
        )
        ids.append(response.json()["id"])
    old_entry = settings.master_keys.reveal()
    rotated = replace(settings, master_keys=Secret(f"{generate_master_key_entry('test2')},{old_entry}"))
    assert await _rewrap(rotated) == 3
    assert await _rewrap(rotated) == 0

    new_only = Keyring.parse(rotated.master_keys.reveal().split(",")[0])
    for i, secret_id in enumerate(ids):
        sealed = await _stored(settings, project["projectId"], secret_id)
        assert sealed_key_id(sealed) == "test2"
        aad = Binding(project["projectId"], secret_id, f"ROT_{i}", 1)
        assert unseal(new_only, sealed, aad) == f"value-{i}"
