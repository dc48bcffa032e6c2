"""Every call of the async client against the real service (in process, both backends)."""

from __future__ import annotations

import asyncio
from datetime import datetime

import httpx
import pytest
from asgi_lifespan import LifespanManager
from secrets_client import (
    ConflictError,
    Deleted,
    ForbiddenError,
    GoneError,
    InvalidRequestError,
    NotFoundError,
    PreconditionFailedError,
    QuotaExceededError,
    Secret,
    SecretsClient,
    UnauthorizedError,
    Version,
)

from service.app import create_app
from service.settings import Settings
from tests.client.conftest import FAST_RETRIES
from tests.support.app import issue_key, make_env, make_project, revoke_key


async def test_create_get_list_update_versions_restore_delete(api: SecretsClient) -> None:
    created = await api.create("DATABASE_URL", "postgres://one")
    assert isinstance(created, Secret)
    assert (created.name, created.version) == ("DATABASE_URL", 1)
    assert isinstance(created.created_at, datetime) and created.created_at.tzinfo is not None
    other = await api.create("API_TOKEN", "t")

    assert await api.get(created.id) == created
    assert [s.name for s in await api.list()] == ["API_TOKEN", "DATABASE_URL"]

    updated = await api.update(created.id, "postgres://two")
    assert (updated.id, updated.version) == (created.id, 2)
    assert updated.updated_at >= created.updated_at
    assert (await api.read_value(name="DATABASE_URL")).reveal() == "postgres://two"

    versions = await api.versions(created.id)
    assert all(isinstance(v, Version) for v in versions)
    assert [v.version for v in versions] == [2, 1]

    restored = await api.restore(created.id, 1)
    assert restored.version == 3
    assert (await api.read_value(id=created.id)).reveal() == "postgres://one"
    assert (await api.read_value(id=created.id, version=2)).reveal() == "postgres://two"

    deleted = await api.delete(created.id)
    assert deleted == Deleted(id=created.id, version=3)
    assert [s.id for s in await api.list()] == [other.id]
    with pytest.raises(NotFoundError):
        await api.get(created.id)


async def test_read_value_returns_the_exact_value_masked(api: SecretsClient) -> None:
    value = "line one\nline two\0 with NUL, 'quotes', ünïcödé and 🔑"
    secret = await api.create("EXACT", value)
    by_name = await api.read_value(name="EXACT")
    by_id = await api.read_value(id=secret.id, version=1)
    assert by_name.reveal() == by_id.reveal() == value
    assert (by_name.id, by_name.name, by_name.version) == (secret.id, "EXACT", 1)
    assert "line" not in repr(by_name) and "line" not in str(by_name) and "line" not in f"{by_name}"
    with pytest.raises(TypeError):
        await api.read_value(name="EXACT", id=secret.id)
    with pytest.raises(TypeError):
        await api.read_value(name="EXACT", version=1)


async def test_if_match_guards_updates_deletes_and_restores(api: SecretsClient) -> None:
    secret = await api.create("GUARDED", "v1")
    updated = await api.update(secret.id, "v2", if_match=1)
    assert updated.version == 2
    with pytest.raises(PreconditionFailedError) as stale:
        await api.update(secret.id, "v3", if_match=1)
    assert stale.value.current_version == 2
    with pytest.raises(PreconditionFailedError):
        await api.delete(secret.id, if_match='"1"')
    with pytest.raises(PreconditionFailedError):
        await api.restore(secret.id, 1, if_match=1)
    assert (await api.restore(secret.id, 1, if_match="*")).version == 3
    assert (await api.delete(secret.id, if_match=3)).version == 3


async def test_errors_are_typed_and_carry_the_services_message(api: SecretsClient) -> None:
    secret = await api.create("TAKEN", "v")
    with pytest.raises(ConflictError) as conflict:
        await api.create("TAKEN", "other")
    assert conflict.value.status == 409
    with pytest.raises(InvalidRequestError) as invalid:
        await api.create("not a name", "v")
    assert invalid.value.status == 422 and "name" in invalid.value.message
    with pytest.raises(InvalidRequestError):
        await api.update(secret.id, "")
    with pytest.raises(NotFoundError) as missing:
        await api.read_value(name="NOPE")
    assert missing.value.error == "secret_not_found"
    with pytest.raises(NotFoundError):
        await api.versions("no-such-id")
    with pytest.raises(NotFoundError):
        await api.delete("no/such id")


async def test_a_pruned_version_is_gone(database_url: str) -> None:
    settings = Settings.from_env(make_env(database_url, SECRET_VERSIONS_KEPT="2"))
    project = await make_project(settings, "pruned")
    async with LifespanManager(create_app(settings), startup_timeout=30, shutdown_timeout=30) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with SecretsClient("http://service", project["apiKey"], transport=transport) as api:
            secret = await api.create("ROTATED", "v1")
            await api.update(secret.id, "v2")
            await api.update(secret.id, "v3")
            with pytest.raises(GoneError):
                await api.read_value(id=secret.id, version=1)
            with pytest.raises(GoneError):
                await api.restore(secret.id, 1)


async def test_the_quota_is_its_own_error(database_url: str) -> None:
    settings = Settings.from_env(make_env(database_url, MAX_SECRETS_PER_PROJECT="2"))
    project = await make_project(settings, "full")
    async with LifespanManager(create_app(settings), startup_timeout=30, shutdown_timeout=30) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with SecretsClient("http://service", project["apiKey"], transport=transport) as api:
            await api.create("ONE", "v")
            await api.create("TWO", "v")
            with pytest.raises(QuotaExceededError) as full:
                await api.create("THREE", "v")
            assert full.value.status == 422


async def test_keys_the_service_refuses(
    asgi_transport: httpx.ASGITransport, settings: Settings, project: dict[str, str]
) -> None:
    viewer = await issue_key(settings, project["projectId"], "secrets:view")
    async with SecretsClient("http://service", viewer["apiKey"], transport=asgi_transport) as api:
        assert await api.list() == []
        with pytest.raises(ForbiddenError) as forbidden:
            await api.read_value(name="ANY")
        assert "secrets:read" in forbidden.value.message
        with pytest.raises(ForbiddenError):
            await api.create("NEW", "v")
    assert await revoke_key(settings, viewer["apiKeyId"])
    async with SecretsClient("http://service", viewer["apiKey"], transport=asgi_transport) as api:
        with pytest.raises(UnauthorizedError):
            await api.list()


async def test_store_creates_then_updates(api: SecretsClient) -> None:
    first = await api.store("STORED", "v1")
    assert first.version == 1
    second = await api.store("STORED", "v2")
    assert (second.id, second.version) == (first.id, 2)
    assert (await api.read_value(name="STORED")).reveal() == "v2"


async def test_store_racing_itself_ends_in_updates_never_an_error(api: SecretsClient) -> None:
    results = await asyncio.gather(*(api.store("RACED", f"v{i}") for i in range(8)))
    assert len({r.id for r in results}) == 1, "racing stores made more than one secret"
    assert sorted(r.version for r in results) == list(range(1, 9))
    final = await api.read_value(name="RACED")
    assert final.version == 8 and final.reveal() in {f"v{i}" for i in range(8)}


async def test_store_after_a_concurrent_delete_creates_again(api: SecretsClient) -> None:
    secret = await api.create("COMEBACK", "v1")
    await api.delete(secret.id)
    again = await api.store("COMEBACK", "v2")
    assert again.id != secret.id and again.version == 1


async def test_every_create_carries_an_idempotency_key(project: dict[str, str]) -> None:
    seen: list[str | None] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("idempotency-key"))
        return httpx.Response(
            201,
            json={
                "id": "s1",
                "projectId": "p",
                "name": "N",
                "createdAt": "2030-01-01T00:00:00.000Z",
                "updatedAt": "2030-01-01T00:00:00.000Z",
                "version": 1,
            },
        )

    async with SecretsClient(
        "http://x", "k", transport=httpx.MockTransport(answer), retry=FAST_RETRIES
    ) as api:
        await api.create("N", "v")
        await api.create("N", "v")
        await api.create("N", "v", idempotency_key="mine")
    assert seen[0] and seen[1] and seen[0] != seen[1]
    assert seen[2] == "mine"
