"""Fixtures shared by the suite; plain helpers live in tests/support.

The database backend comes from TEST_DATABASE_URLS (comma-separated; default: a
SQLite file per test). A postgresql URL there names a server: every test gets a
fresh database on it. Kafka tests use TEST_KAFKA_BOOTSTRAP, or start the
project's local broker (scripts/kafka-local) for the session.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from service.db.url import DatabaseURL
from service.settings import Settings
from tests.support.app import make_env, make_project, serving
from tests.support.database import fresh_postgres_database
from tests.support.paths import ROOT
from tests.support.service import Deployment, DeploymentFactory, Service

_BACKENDS = [url.strip() for url in os.environ.get("TEST_DATABASE_URLS", "sqlite").split(",") if url.strip()]


def _backend_id(url: str) -> str:
    return "sqlite" if url == "sqlite" else DatabaseURL.parse(url).dialect


@pytest.fixture(params=_BACKENDS, ids=[_backend_id(u) for u in _BACKENDS])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    backend: str = request.param
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path}/secrets.db"
        return
    with fresh_postgres_database(backend) as url:
        yield url


@pytest.fixture
def env(database_url: str) -> dict[str, str]:
    return make_env(database_url)


@pytest.fixture
def settings(env: dict[str, str]) -> Settings:
    return Settings.from_env(env)


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(settings) as http:
        yield http


@pytest.fixture
async def project(settings: Settings) -> dict[str, str]:
    return await make_project(settings, "project-a")


@pytest.fixture
async def other_project(settings: Settings) -> dict[str, str]:
    return await make_project(settings, "project-b")


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    configured = os.environ.get("TEST_KAFKA_BOOTSTRAP")
    if configured:
        yield configured
        return
    script = str(ROOT / "scripts" / "kafka-local")
    # A broker already running (a developer's) is used and left running; one started here is stopped.
    running = subprocess.run([script, "status"], capture_output=True, text=True, timeout=60).returncode == 0
    started = subprocess.run([script, "start"], capture_output=True, text=True, timeout=900)
    assert started.returncode == 0, started.stderr[-2000:]
    try:
        yield started.stdout.strip().splitlines()[-1]
    finally:
        if not running:
            subprocess.run([script, "stop"], capture_output=True, text=True, timeout=120)


@pytest.fixture
async def deploy(tmp_path: Path) -> AsyncIterator[DeploymentFactory]:
    """Make deployments (a `serve` process, not started, on a SQLite file of its own) against a
    bootstrap address; every service started is killed at teardown."""
    services: list[Service] = []

    async def make(bootstrap: str, **overrides: str) -> Deployment:
        workdir = tmp_path / f"deployment-{len(services)}"
        workdir.mkdir()
        env = make_env(
            f"sqlite:///{workdir}/secrets.db",
            KAFKA_BOOTSTRAP_SERVERS=bootstrap,
            OUTBOX_POLL_SECONDS="0.1",
            **overrides,
        )
        settings = Settings.from_env(env)
        project = await make_project(settings, "processes")
        service = Service(env, workdir)
        services.append(service)
        return Deployment(service, settings, project, env["SECRETS_MASTER_KEYS"])

    try:
        yield make
    finally:
        for service in services:
            service.kill()
