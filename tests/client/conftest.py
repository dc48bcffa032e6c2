"""Fixtures of the client's tests: the service in process (both backends) behind the client's own transport."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from asgi_lifespan import LifespanManager
from secrets_client import RetryPolicy, SecretsClient

from service.app import create_app
from service.settings import Settings

FAST_RETRIES = RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05)


@pytest.fixture
async def asgi_transport(settings: Settings) -> AsyncIterator[httpx.ASGITransport]:
    """The service in process, lifespan running, as an httpx transport."""
    app = create_app(settings)
    async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30) as manager:
        yield httpx.ASGITransport(app=manager.app)


@pytest.fixture
async def api(asgi_transport: httpx.ASGITransport, project: dict[str, str]) -> AsyncIterator[SecretsClient]:
    """The client, with the project's key (every scope), against the in-process service."""
    async with SecretsClient(
        "http://service", project["apiKey"], transport=asgi_transport, retry=FAST_RETRIES, total_timeout=30
    ) as client:
        yield client
