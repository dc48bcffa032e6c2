"""PostgreSQL faults: a lost connection is a 503 the client can retry, never a 500 that leaks."""

from __future__ import annotations

import asyncio

import asyncpg
import httpx
import pytest

from service.db.url import DatabaseURL
from service.settings import Settings
from tests.support.app import auth
from tests.support.database import is_sqlite

pytestmark = pytest.mark.postgres


async def _terminate_backends(database_url: str) -> int:
    url = DatabaseURL.parse(database_url)
    conn = await asyncpg.connect(url.with_database("postgres").postgres_dsn, timeout=10)
    try:
        rows = await conn.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            url.database_name,
        )
    finally:
        await conn.close()
    return len(rows)


async def test_lost_connections_answer_503_then_recover(
    client: httpx.AsyncClient, settings: Settings, project: dict[str, str]
) -> None:
    if is_sqlite(settings):
        pytest.skip("PostgreSQL only")
    assert (
        await client.post("/api/secrets", json={"name": "BEFORE", "value": "v"}, headers=auth(project))
    ).status_code == 201
    assert await _terminate_backends(settings.database_url) > 0

    codes = []
    for i in range(20):
        response = await client.post(
            "/api/secrets", json={"name": f"AFTER_{i}", "value": "v"}, headers=auth(project)
        )
        assert response.status_code in (201, 503), response.text
        assert "asyncpg" not in response.text
        codes.append(response.status_code)
        if response.status_code == 201:
            break
        await asyncio.sleep(0.2)
    assert codes[-1] == 201, codes

    listed = (await client.get("/api/secrets", headers=auth(project))).json()
    assert {"BEFORE", f"AFTER_{len(codes) - 1}"} <= {s["name"] for s in listed}
