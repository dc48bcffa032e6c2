"""Fixtures shared by the suite.

The database backend comes from TEST_DATABASE_URLS (comma-separated; default: a
SQLite file per test). A postgresql URL there names a server: every test gets a
fresh database on it. Kafka tests use TEST_KAFKA_BOOTSTRAP, or start the
project's local broker (scripts/kafka-local) for the session.
"""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from asgi_lifespan import LifespanManager
from databases import DatabaseURL

from service import admin
from service.app import create_app
from service.crypto import generate_master_key_entry
from service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
CANARY = "canary-7f3a9c-DO-NOT-LEAK"
_BACKENDS = [url.strip() for url in os.environ.get("TEST_DATABASE_URLS", "sqlite").split(",") if url.strip()]


def _backend_id(url: str) -> str:
    return "sqlite" if url == "sqlite" else DatabaseURL(url).dialect


@pytest.fixture(params=_BACKENDS, ids=[_backend_id(u) for u in _BACKENDS])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    backend: str = request.param
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path}/secrets.db"
        return
    import asyncpg

    server = DatabaseURL(backend)
    name = "test_" + uuid.uuid4().hex[:12]
    dsn = str(server.replace(database="postgres")).replace("postgresql+asyncpg://", "postgresql://", 1)

    async def admin_sql(sql: str) -> None:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin_sql(f'CREATE DATABASE "{name}"'))
    yield str(server.replace(database=name))
    asyncio.run(admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


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
    }
    env.update(overrides)
    return env


@pytest.fixture
def env(database_url: str) -> dict[str, str]:
    return make_env(database_url)


@pytest.fixture
def settings(env: dict[str, str]) -> Settings:
    return Settings.from_env(env)


@pytest_asyncio.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with LifespanManager(create_app(settings), startup_timeout=30, shutdown_timeout=30) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as http:
            yield http


@pytest_asyncio.fixture
async def project(settings: Settings) -> dict[str, str]:
    return await admin.create_project(settings, "project-a")


@pytest_asyncio.fixture
async def other_project(settings: Settings) -> dict[str, str]:
    return await admin.create_project(settings, "project-b")


def auth(project: dict[str, str]) -> dict[str, str]:
    return {"X-Auth-Token": project["apiKey"]}


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    configured = os.environ.get("TEST_KAFKA_BOOTSTRAP")
    if configured:
        yield configured
        return
    started = subprocess.run(
        [str(ROOT / "scripts" / "kafka-local"), "start"], capture_output=True, text=True, timeout=900
    )
    assert started.returncode == 0, started.stderr[-2000:]
    yield started.stdout.strip().splitlines()[-1]


async def read_topic(bootstrap: str, topic: str, expected: int, timeout: float = 30.0) -> list[Any]:
    """Every record on the topic, waiting until at least `expected` have arrived (or the timeout)."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        request_timeout_ms=10000,
    )
    await asyncio.wait_for(consumer.start(), 30)
    records: list[Any] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            batches = await consumer.getmany(timeout_ms=300)
            for batch in batches.values():
                records.extend(batch)
            if len(records) >= expected and not batches:
                break
    finally:
        await asyncio.wait_for(consumer.stop(), 30)
    return records
