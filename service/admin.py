"""Operator actions on projects and API keys, run from the command line."""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from databases.core import Connection

from service import repository
from service.crypto import Keyring, associated_data, generate_api_key, hash_api_key, rewrap
from service.migrations import migrate
from service.outbox import utc_now
from service.settings import Settings
from service.store import configure_connection, open_database, write_transaction


@asynccontextmanager
async def _writing(settings: Settings) -> AsyncIterator[Connection]:
    database = open_database(settings.database_url)
    await database.connect()
    try:
        await migrate(database)
        async with database.connection() as conn:
            await configure_connection(conn, settings.sqlite_synchronous)
            async with write_transaction(conn):
                yield conn
    finally:
        await database.disconnect()


async def _new_key(conn: Connection, settings: Settings, project_id: str) -> dict[str, str]:
    api_key = generate_api_key()
    key_id = str(uuid.uuid4())
    hash_key = base64.b64decode(settings.api_key_hash_key.reveal())
    await repository.insert_api_key(conn, key_id, project_id, hash_api_key(hash_key, api_key), utc_now())
    return {"projectId": project_id, "apiKeyId": key_id, "apiKey": api_key}


async def create_project(settings: Settings, name: str) -> dict[str, str]:
    """A new project and its first API key; the key is returned once and stored only as a keyed hash."""
    project_id = "project_" + uuid.uuid4().hex
    async with _writing(settings) as conn:
        await repository.insert_project(conn, project_id, name, utc_now())
        return await _new_key(conn, settings, project_id)


async def issue_api_key(settings: Settings, project_id: str) -> dict[str, str]:
    async with _writing(settings) as conn:
        return await _new_key(conn, settings, project_id)


async def revoke_api_key(settings: Settings, api_key_id: str) -> bool:
    async with _writing(settings) as conn:
        return await repository.revoke_api_key(conn, api_key_id, utc_now())


async def rewrap_all(settings: Settings, batch: int = 500) -> int:
    """Re-wrap every data key not under the primary master key; returns how many were re-wrapped."""
    keyring = Keyring.from_setting(settings.master_keys)
    done = 0
    while True:
        async with _writing(settings) as conn:
            rows = await repository.sealed_values_not_under(conn, keyring.primary_id, batch)
            for row in rows:
                aad = associated_data(row["project_id"], row["id"], row["name"])
                sealed = rewrap(keyring, bytes(row["sealed_value"]), aad)
                await repository.replace_sealed_value(
                    conn, row["id"], row["key_id"], sealed, keyring.primary_id
                )
        done += len(rows)
        if len(rows) < batch:
            return done
