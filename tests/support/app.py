"""The app in process: settings for a test, a client over its lifespan, projects and their keys."""

from __future__ import annotations

import base64
import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
from asgi_lifespan import LifespanManager

from service.accounts import admin
from service.app import create_app
from service.clock import SystemClock
from service.crypto import generate_master_key_entry
from service.db.dialect import open_store
from service.settings import Settings


def make_env(database_url: str, **overrides: str) -> dict[str, str]:
    env = {
        "DATABASE_URL": database_url,
        "SECRETS_MASTER_KEYS": generate_master_key_entry("test1"),
        "API_KEY_HASH_KEY": base64.b64encode(os.urandom(32)).decode(),
        # Unreachable unless a test asks for Kafka: creates must not depend on it.
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9",
        "KAFKA_TOPIC": "test-" + uuid.uuid4().hex[:10],
        "KAFKA_TIMEOUT_SECONDS": "3",
        "AUTH_CACHE_SECONDS": "0",
        "OUTBOX_POLL_SECONDS": "0.2",
        "RELAY_SHUTDOWN_SECONDS": "2",
        "LOG_LEVEL": "INFO",
        # Off unless a test is about them: other tests send bursts from one key.
        "RATE_LIMIT_PER_SECOND": "0",
        "RATE_LIMIT_READS_PER_SECOND": "0",
    }
    env.update(overrides)
    return env


@contextlib.asynccontextmanager
async def serving(settings: Settings, **app_options: Any) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for the in-process app, with its lifespan running."""
    app = create_app(settings, **app_options)
    async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as http:
            yield http


async def make_project(settings: Settings, name: str) -> dict[str, str]:
    """A project and its first key, as `secrets-service projects create` prints them."""
    async with open_store(settings.database, settings.sqlite_synchronous) as store:
        issued = await admin.create_project(store, settings.api_key_hash_key.reveal(), SystemClock(), name)
    return issued.to_json()


async def revoke_key(settings: Settings, api_key_id: str) -> bool:
    async with open_store(settings.database, settings.sqlite_synchronous) as store:
        return await admin.revoke_api_key(store, SystemClock(), api_key_id)


def auth(project: dict[str, str]) -> dict[str, str]:
    return {"X-Auth-Token": project["apiKey"]}


async def create(
    client: httpx.AsyncClient,
    project: dict[str, str],
    name: str = "OPENAI_API_KEY",
    value: str = "sk-value",
    **headers: str,
) -> httpx.Response:
    """POST /api/secrets as the project."""
    return await client.post(
        "/api/secrets", json={"name": name, "value": value}, headers={**auth(project), **headers}
    )


async def created(
    client: httpx.AsyncClient, project: dict[str, str], name: str, value: str
) -> dict[str, Any]:
    """Create a secret that must be created; its metadata."""
    response = await create(client, project, name=name, value=value)
    assert response.status_code == 201, response.status_code
    body: dict[str, Any] = response.json()
    return body


async def listed(client: httpx.AsyncClient, project: dict[str, str]) -> list[dict[str, Any]]:
    response = await client.get("/api/secrets", headers=auth(project))
    assert response.status_code == 200
    body: list[dict[str, Any]] = response.json()
    return body


async def issue_key(settings: Settings, project_id: str, *scopes: str) -> dict[str, Any]:
    """Another key for the project, holding `scopes`, as `keys issue --scope ...` prints it."""
    async with open_store(settings.database, settings.sqlite_synchronous) as store:
        issued = await admin.issue_api_key(
            store, settings.api_key_hash_key.reveal(), SystemClock(), project_id, scopes
        )
    return issued.to_json()
