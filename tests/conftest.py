"""Fixtures shared by the suite.

The database backend comes from TEST_DATABASE_URLS (comma-separated; default: a
SQLite file per test). A postgresql URL there names a server: every test gets a
fresh database on it. Kafka tests use TEST_KAFKA_BOOTSTRAP, or start the
project's local broker (scripts/kafka-local) for the session.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
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


@contextlib.contextmanager
def fresh_postgres_database(server_url: str, prefix: str = "test_") -> Iterator[str]:
    """A new, empty database on the PostgreSQL server of server_url, dropped afterwards."""
    import asyncpg

    server = DatabaseURL(server_url)
    name = prefix + uuid.uuid4().hex[:12]
    dsn = str(server.replace(database="postgres")).replace("postgresql+asyncpg://", "postgresql://", 1)

    async def admin_sql(sql: str) -> None:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin_sql(f'CREATE DATABASE "{name}"'))
    try:
        yield str(server.replace(database=name))
    finally:
        asyncio.run(admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=_BACKENDS, ids=[_backend_id(u) for u in _BACKENDS])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    backend: str = request.param
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path}/secrets.db"
        return
    with fresh_postgres_database(backend) as url:
        yield url


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


@contextlib.asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for the in-process app, with its lifespan running."""
    async with LifespanManager(create_app(settings), startup_timeout=30, shutdown_timeout=30) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as http:
            yield http


@pytest_asyncio.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(settings) as http:
        yield http


@pytest_asyncio.fixture
async def project(settings: Settings) -> dict[str, str]:
    return await admin.create_project(settings, "project-a")


@pytest_asyncio.fixture
async def other_project(settings: Settings) -> dict[str, str]:
    return await admin.create_project(settings, "project-b")


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


# ---------------------------------------------------------------------------
# Helpers for the event and process tests (tests/test_events.py, tests/test_processes.py).
# Plain functions and one small class; no fixtures here.
# ---------------------------------------------------------------------------


def secret_forms(secret: str) -> list[bytes]:
    """Byte strings whose presence would reveal `secret`: itself, its hex, and its base64 at every alignment."""
    raw = secret.encode()
    forms = [raw, raw.hex().encode()]
    for alphabet in (base64.b64encode, base64.urlsafe_b64encode):
        for shift in range(3):
            encoded = alphabet(b"\0" * shift + raw).rstrip(b"=")
            # Drop the characters that mix in the padding bytes or whatever follows the secret.
            forms.append(encoded[(4 if shift else 0) : -4])
    return forms


def leaked(secret: str, *blobs: bytes | str) -> bool:
    """Whether any form of `secret` occurs in any blob (never prints either)."""
    forms = secret_forms(secret)
    for blob in blobs:
        data = blob.encode() if isinstance(blob, str) else blob
        if any(form in data for form in forms):
            return True
    return False


async def poll_until(check: Any, timeout: float, interval: float = 0.25, what: str = "condition") -> Any:
    """Call `check()` (sync or async) until it returns something truthy; fail after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if loop.time() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(interval)


async def topic_snapshot(bootstrap: str, topic: str, timeout: float = 30.0) -> list[Any]:
    """Every record on the topic up to its current end offsets ([] while the topic does not exist)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    async with asyncio.timeout(timeout):
        admin_client = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
        await admin_client.start()
        try:
            (described,) = await admin_client.describe_topics([topic])
        finally:
            await admin_client.close()
        if described["error_code"] != 0 or not described["partitions"]:
            return []
        partitions = [TopicPartition(topic, p["partition"]) for p in described["partitions"]]
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=None,
            enable_auto_commit=False,
            # Not only a seek: with the default ("latest") the fetcher may reset past our seek.
            auto_offset_reset="earliest",
            request_timeout_ms=10000,
        )
        await consumer.start()
        try:
            consumer.assign(partitions)
            ends = await consumer.end_offsets(partitions)
            await consumer.seek_to_beginning(*partitions)
            records: list[Any] = []
            remaining = {tp for tp in partitions if ends[tp] > 0}
            while remaining:
                batches = await consumer.getmany(*remaining, timeout_ms=500)
                for tp, batch in batches.items():
                    records.extend(r for r in batch if r.offset < ends[tp])
                for tp in list(remaining):
                    if await consumer.position(tp) >= ends[tp]:
                        remaining.discard(tp)
        finally:
            await consumer.stop()
    return records


async def wait_for_records(
    bootstrap: str, topic: str, done: Any, timeout: float = 60.0, what: str = "records on the topic"
) -> list[Any]:
    """Snapshots of the topic until `done(records)` is true; returns the records that satisfied it."""
    found: list[Any] = []

    async def check() -> bool:
        nonlocal found
        try:
            found = await topic_snapshot(bootstrap, topic)
        except (TimeoutError, OSError):
            return False
        return bool(done(found))

    await poll_until(check, timeout, interval=0.5, what=what)
    return found


def record_headers(record: Any) -> dict[str, str]:
    return {name: value.decode() for name, value in (record.headers or [])}


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_broker_port() -> int:
    """A port N such that N and N + 1000 (kafka-local's controller port) are both free."""
    import random
    import socket

    for _ in range(200):
        port = random.randint(20000, 29999)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1000))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a private broker")


class LocalBroker:
    """A private scripts/kafka-local broker on its own port and data dir; `stop()` is safe to call always."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.port = port or free_broker_port()
        self.data_dir = data_dir
        self.address = f"127.0.0.1:{self.port}"

    def _run(self, action: str, timeout: float) -> str:
        done = subprocess.run(
            [
                str(ROOT / "scripts" / "kafka-local"),
                action,
                "--port",
                str(self.port),
                "--data",
                str(self.data_dir),
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert done.returncode == 0, f"kafka-local {action} failed: {done.stderr[-2000:]}"
        return done.stdout

    def start(self) -> str:
        lines = self._run("start", timeout=240).strip().splitlines()
        assert lines and lines[-1] == self.address, f"unexpected kafka-local output: {lines[-1:]}"
        return self.address

    def stop(self) -> None:
        self._run("stop", timeout=120)

    async def astart(self) -> str:
        return await asyncio.to_thread(self.start)

    async def astop(self) -> None:
        await asyncio.to_thread(self.stop)
