"""Scoped API keys: every route by every scope, and by no key and a revoked key.

secrets:view lists and reads metadata and versions; secrets:read adds value reads;
secrets:manage is everything. A key without the scope a route needs gets a 403 that
names the scope, and the request changes nothing.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from service.settings import Settings
from tests.support.app import auth, created, issue_key, listed, revoke_key
from tests.support.database import events_for, stored_value
from tests.support.leaks import CANARY

VIEW, READ, MANAGE = "secrets:view", "secrets:read", "secrets:manage"
# method, path (with {id} and {name} of an existing secret), body, the scope it needs, the success status
ROUTES: list[tuple[str, str, dict[str, Any] | None, str, int]] = [
    ("GET", "/api/secrets", None, VIEW, 200),
    ("POST", "/api/secrets", {"name": "ANOTHER", "value": "v"}, MANAGE, 201),
    ("GET", "/api/secrets/{id}", None, VIEW, 200),
    ("PUT", "/api/secrets/{id}", {"value": "replaced"}, MANAGE, 200),
    ("DELETE", "/api/secrets/{id}", None, MANAGE, 200),
    ("GET", "/api/secrets/{id}/versions", None, VIEW, 200),
    ("POST", "/api/secrets/{id}/versions/1/restore", None, MANAGE, 200),
    ("GET", "/api/secrets/{id}/value", None, READ, 200),
    ("GET", "/api/secrets/by-name/{name}/value", None, READ, 200),
]
# What each key may do.
KEYS = {
    "view": {VIEW},
    "read": {VIEW, READ},
    "manage": {VIEW, READ, MANAGE},
    "view+read": {VIEW, READ},
    "project-key": {VIEW, READ, MANAGE},
}
KEY_SCOPES = {"view": [VIEW], "read": [READ], "manage": [MANAGE], "view+read": [VIEW, READ]}
UNAUTHORIZED = {
    "error": "Unauthorized",
    "message": "A valid project API key is required, as X-Auth-Token: sk-lw-... or Authorization: Bearer sk-lw-...",
}


@pytest.mark.parametrize("route", ROUTES, ids=[f"{m} {p}" for m, p, *_ in ROUTES])
@pytest.mark.parametrize("key", [*KEYS, "none", "revoked"])
async def test_every_route_by_every_key(
    client: httpx.AsyncClient,
    settings: Settings,
    project: dict[str, str],
    route: tuple[str, str, dict[str, Any] | None, str, int],
    key: str,
) -> None:
    method, path, body, needs, success = route
    secret = await created(client, project, "GUARDED", CANARY)
    if key == "project-key":
        headers = auth(project)
    elif key == "none":
        headers = {}
    elif key == "revoked":
        revoked = await issue_key(settings, project["projectId"], MANAGE)
        assert await revoke_key(settings, revoked["apiKeyId"])
        headers = auth(revoked)
    else:
        headers = auth(await issue_key(settings, project["projectId"], *KEY_SCOPES[key]))

    response = await client.request(
        method, path.format(id=secret["id"], name=secret["name"]), json=body, headers=headers
    )

    if key in ("none", "revoked"):
        assert response.status_code == 401
        assert response.json() == UNAUTHORIZED
    elif needs in KEYS[key]:
        assert response.status_code == success, response.text
        if path.endswith("/value"):
            assert response.json()["value"] == CANARY
            assert response.headers["cache-control"] == "no-store"
        return
    else:
        assert response.status_code == 403
        assert response.json() == {"error": "Forbidden", "message": f"This API key lacks the {needs} scope"}
    # Refused: nothing changed, nothing was read.
    assert await listed(client, project) == [secret]
    assert await stored_value(settings, secret) == CANARY
    assert await events_for(settings, secret["id"]) == ["secret.created"]


async def test_keys_list_shows_scopes_and_never_a_key(settings: Settings, project: dict[str, str]) -> None:
    from service.accounts import admin
    from service.db.dialect import open_store

    reader = await issue_key(settings, project["projectId"], READ)
    async with open_store(settings.database) as store:
        keys = [key.to_json() for key in await admin.list_api_keys(store, project["projectId"])]
    assert {k["apiKeyId"]: k["scopes"] for k in keys} == {
        project["apiKeyId"]: [MANAGE, READ, VIEW],
        reader["apiKeyId"]: [READ],
    }
    assert project["apiKey"] not in str(keys) and reader["apiKey"] not in str(keys)
