"""POST /api/secrets against the running app, as LangWatch's contract says."""

from __future__ import annotations

import asyncio
import re
from datetime import datetime

import httpx
import pytest

from service.settings import Settings
from tests.support.app import auth, create, revoke_key
from tests.support.leaks import CANARY

ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")


async def test_create_returns_metadata_never_the_value(
    client: httpx.AsyncClient, project: dict[str, str]
) -> None:
    response = await create(client, project, value=CANARY)
    assert response.status_code == 201
    body = response.json()
    assert set(body) == {"id", "projectId", "name", "createdAt", "updatedAt", "version"}
    assert body["version"] == 1
    assert response.headers["etag"] == '"1"'
    assert body["projectId"] == project["projectId"]
    assert body["name"] == "OPENAI_API_KEY"
    assert ISO_UTC.fullmatch(body["createdAt"]) and ISO_UTC.fullmatch(body["updatedAt"])
    assert datetime.fromisoformat(body["createdAt"]).tzinfo is not None
    assert response.headers["location"] == f"/api/secrets/{body['id']}"
    assert response.headers["cache-control"] == "no-store"
    assert CANARY not in response.text


async def test_bearer_authorization_is_accepted(client: httpx.AsyncClient, project: dict[str, str]) -> None:
    response = await client.post(
        "/api/secrets",
        json={"name": "A", "value": "v"},
        headers={"Authorization": f"Bearer {project['apiKey']}"},
    )
    assert response.status_code == 201


async def test_client_cannot_set_server_fields(
    client: httpx.AsyncClient, project: dict[str, str], other_project: dict[str, str]
) -> None:
    response = await client.post(
        "/api/secrets",
        json={
            "name": "A",
            "value": "v",
            "id": "mine",
            "projectId": other_project["projectId"],
            "createdAt": "1999-01-01T00:00:00Z",
            "updatedAt": "1999-01-01T00:00:00Z",
        },
        headers=auth(project),
    )
    assert response.status_code == 201
    body = response.json()
    assert body["id"] != "mine"
    assert body["projectId"] == project["projectId"]
    assert not body["createdAt"].startswith("1999")
    listed = (await client.get("/api/secrets", headers=auth(other_project))).json()
    assert listed == []


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"value": "v"}, "name"),
        ({"name": "A"}, "value"),
        ({"name": 5, "value": "v"}, "name"),
        ({"name": "A", "value": 5}, "value"),
        ({"name": "A", "value": None}, "value"),
        ({"name": "lower", "value": "v"}, "name"),
        ({"name": "1ABC", "value": "v"}, "name"),
        ({"name": "A-B", "value": "v"}, "name"),
        ({"name": "", "value": "v"}, "name"),
        ({"name": "A\n", "value": "v"}, "name"),
        ({"name": "A", "value": ""}, "value"),
        ({"name": "A", "value": "x" * 10001}, "value"),
    ],
)
async def test_schema_violations_are_422_naming_the_field(
    client: httpx.AsyncClient, project: dict[str, str], payload: dict[str, object], field: str
) -> None:
    response = await client.post("/api/secrets", json=payload, headers=auth(project))
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "Unprocessable Entity"
    assert body["message"].startswith(field)


async def test_invalid_value_is_never_echoed(client: httpx.AsyncClient, project: dict[str, str]) -> None:
    response = await client.post(
        "/api/secrets", json={"name": "A", "value": CANARY * 1000}, headers=auth(project)
    )
    assert response.status_code == 422
    assert "canary" not in response.text


async def test_value_length_counts_code_points(client: httpx.AsyncClient, project: dict[str, str]) -> None:
    # 10000 four-byte characters: 40000 bytes, but 10000 characters as JSON Schema counts them.
    assert (await create(client, project, name="EMOJI", value="😀" * 10000)).status_code == 201
    assert (await create(client, project, name="EMOJI2", value="😀" * 10001)).status_code == 422


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-Auth-Token": ""},
        {"X-Auth-Token": "sk-lw-" + "A" * 48},
        {"X-Auth-Token": "not-a-key"},
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer sk-lw-nope"},
    ],
    ids=["missing", "empty", "unknown", "malformed", "basic", "unknown-bearer"],
)
async def test_missing_or_invalid_key_is_401(
    client: httpx.AsyncClient, project: dict[str, str], headers: dict[str, str]
) -> None:
    response = await client.post("/api/secrets", json={"name": "A", "value": "v"}, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json() == {
        "error": "Unauthorized",
        "message": "A valid project API key is required, as X-Auth-Token: sk-lw-... or Authorization: Bearer sk-lw-...",
    }


async def test_revoked_key_gets_the_same_401(
    client: httpx.AsyncClient, settings: Settings, project: dict[str, str]
) -> None:
    assert (await create(client, project, name="BEFORE")).status_code == 201
    assert await revoke_key(settings, project["apiKeyId"])
    revoked = await create(client, project, name="AFTER")
    unknown = await client.post(
        "/api/secrets", json={"name": "A", "value": "v"}, headers={"X-Auth-Token": "sk-lw-" + "B" * 48}
    )
    assert revoked.status_code == 401
    assert revoked.json() == unknown.json()


async def test_duplicate_name_is_409_and_keeps_the_first(
    client: httpx.AsyncClient, project: dict[str, str]
) -> None:
    first = await create(client, project, name="DUP", value="one")
    second = await create(client, project, name="DUP", value="two")
    assert first.status_code == 201
    assert second.status_code == 409
    assert second.json()["error"] == "Conflict"
    listed = (await client.get("/api/secrets", headers=auth(project))).json()
    assert [s["id"] for s in listed] == [first.json()["id"]]


async def test_same_name_in_two_projects_is_fine(
    client: httpx.AsyncClient, project: dict[str, str], other_project: dict[str, str]
) -> None:
    assert (await create(client, project, name="SHARED")).status_code == 201
    assert (await create(client, other_project, name="SHARED")).status_code == 201


async def test_concurrent_creates_of_one_name_give_one_201(
    client: httpx.AsyncClient, project: dict[str, str]
) -> None:
    responses = await asyncio.gather(
        *(create(client, project, name="RACE", value=f"v{i}") for i in range(50))
    )
    codes = sorted(r.status_code for r in responses)
    assert codes == [201] + [409] * 49


async def test_unexpected_failure_is_a_generic_500(
    client: httpx.AsyncClient,
    project: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from service.secrets import vault

    def explode(*args: object) -> bytes:
        raise RuntimeError(f"driver says: {CANARY}")

    monkeypatch.setattr(vault, "seal", explode)
    response = await create(client, project, value="anything")
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"error": "Internal Server Error", "message": "An unexpected error occurred"}
    assert CANARY not in response.text
    assert "RuntimeError" in caplog.text
    assert CANARY not in caplog.text


async def test_unknown_route_and_method_answer_in_the_error_shape(client: httpx.AsyncClient) -> None:
    missing = await client.get("/nope")
    assert missing.status_code == 404
    assert set(missing.json()) == {"error", "message"}
    wrong_method = await client.patch("/api/secrets")
    assert wrong_method.status_code == 405
    assert set(wrong_method.json()) == {"error", "message"}
    assert set(wrong_method.headers["allow"].split(", ")) == {"GET", "HEAD", "POST"}
