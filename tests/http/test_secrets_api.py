"""The whole secrets API as a client sees it: list, get, update, delete, idempotent creates,
the quota, isolation between projects, and credentials on every endpoint."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import httpx
import pytest

from service.settings import Settings
from tests.support.app import (
    auth,
    create,
    created,
    issue_key,
    listed,
    make_env,
    make_project,
    revoke_key,
    serving,
)
from tests.support.clock import FakeClock
from tests.support.database import events_for, query, stored_value
from tests.support.leaks import CANARY

METADATA_FIELDS = {"id", "projectId", "name", "createdAt", "updatedAt", "version"}
UNAUTHORIZED = {
    "error": "Unauthorized",
    "message": "A valid project API key is required, as X-Auth-Token: sk-lw-... or Authorization: Bearer sk-lw-...",
}
QUOTA = 3


def instant(timestamp: str) -> datetime:
    return datetime.fromisoformat(timestamp)


@pytest.fixture
async def quota_settings(database_url: str) -> Settings:
    return Settings.from_env(make_env(database_url, MAX_SECRETS_PER_PROJECT=str(QUOTA)))


@pytest.fixture
async def quota_client(quota_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(quota_settings) as http:
        yield http


# GET /api/secrets


async def test_list_is_the_projects_secrets_in_name_order(
    client: httpx.AsyncClient, project: dict[str, str], other_project: dict[str, str]
) -> None:
    # Chosen so that code-point order differs from locale orders (which skip "_") and from insertion order.
    names = ["B", "A_A", "AB", "A1", "A", "Z_9", "A__"]
    ids = {name: (await created(client, project, name, CANARY))["id"] for name in names}
    await created(client, other_project, "AA_OTHER", "other")

    response = await client.get("/api/secrets", headers=auth(project))

    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert isinstance(body, list)
    assert [item["name"] for item in body] == sorted(names)
    for item in body:
        assert set(item) == METADATA_FIELDS
        assert item["projectId"] == project["projectId"]
        assert item["id"] == ids[item["name"]]
    assert CANARY not in response.text


async def test_list_of_a_new_project_is_empty(
    client: httpx.AsyncClient, project: dict[str, str], other_project: dict[str, str]
) -> None:
    await created(client, other_project, "THEIRS", "v")
    assert await listed(client, project) == []


# GET /api/secrets/{id}


async def test_get_returns_the_metadata_create_returned(
    client: httpx.AsyncClient, project: dict[str, str]
) -> None:
    secret = await created(client, project, "DB_PASSWORD", CANARY)

    response = await client.get(f"/api/secrets/{secret['id']}", headers=auth(project))

    assert response.status_code == 200
    assert response.json() == secret
    assert response.headers["cache-control"] == "no-store"
    assert CANARY not in response.text


@pytest.mark.parametrize(
    "missing_id",
    [str(uuid.uuid4()), "nope", "%00", "%FF%FE", "' OR '1'='1", "x" * 5000, "%C3%A9"],
    ids=["uuid", "word", "nul", "invalid-utf8", "sql", "long", "non-ascii"],
)
async def test_missing_and_foreign_secrets_are_the_same_404(
    client: httpx.AsyncClient, project: dict[str, str], other_project: dict[str, str], missing_id: str
) -> None:
    theirs = await created(client, other_project, "THEIRS", "v")

    for method, body in [("GET", None), ("PUT", {"value": "w"}), ("DELETE", None)]:
        missing = await client.request(method, f"/api/secrets/{missing_id}", json=body, headers=auth(project))
        foreign = await client.request(
            method, f"/api/secrets/{theirs['id']}", json=body, headers=auth(project)
        )

        assert missing.status_code == foreign.status_code == 404, method
        assert missing.json() == foreign.json()
        assert set(missing.json()) == {"error", "message"}
        assert missing.json()["error"] == "Not Found"
    assert (await client.get(f"/api/secrets/{theirs['id']}", headers=auth(other_project))).json() == theirs


# PUT /api/secrets/{id}


async def test_update_replaces_the_value_and_keeps_name_and_id(
    client: httpx.AsyncClient, settings: Settings, project: dict[str, str]
) -> None:
    secret = await created(client, project, "DB_PASSWORD", "old-value")

    response = await client.put(
        f"/api/secrets/{secret['id']}",
        # A name in the body is not a rename: PUT replaces the value only.
        json={"value": CANARY, "name": "RENAMED"},
        headers=auth(project),
    )

    assert response.status_code == 200
    body = response.json()
    assert set(body) == METADATA_FIELDS
    assert {k: body[k] for k in ("id", "projectId", "name", "createdAt")} == {
        k: secret[k] for k in ("id", "projectId", "name", "createdAt")
    }
    assert instant(body["updatedAt"]) > instant(secret["createdAt"])
    assert response.headers["cache-control"] == "no-store"
    assert CANARY not in response.text
    assert (await client.get(f"/api/secrets/{secret['id']}", headers=auth(project))).json() == body
    assert await listed(client, project) == [body]
    assert await stored_value(settings, body) == CANARY
    assert await events_for(settings, secret["id"]) == ["secret.created", "secret.updated"]


async def test_update_moves_updated_at_forward_even_when_the_clock_does_not(
    settings: Settings, project: dict[str, str]
) -> None:
    # Create then update within one millisecond (or after an NTP step back): updatedAt must still move.
    async with serving(settings, clock=FakeClock()) as client:
        secret = await created(client, project, "FAST", "one")
        first = (
            await client.put(f"/api/secrets/{secret['id']}", json={"value": "two"}, headers=auth(project))
        ).json()
        second = (
            await client.put(f"/api/secrets/{secret['id']}", json={"value": "three"}, headers=auth(project))
        ).json()

    assert instant(first["updatedAt"]) > instant(secret["createdAt"])
    assert instant(second["updatedAt"]) > instant(first["updatedAt"])


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"value": ""},
        {"value": "x" * 10001},
        {"value": 5},
        {"value": None},
        {"value": ["v"]},
        {"value": "\ud800"},
    ],
    ids=["missing", "empty", "too-long", "number", "null", "array", "lone-surrogate"],
)
async def test_update_validates_the_value_like_create(
    client: httpx.AsyncClient, settings: Settings, project: dict[str, str], payload: dict[str, Any]
) -> None:
    secret = await created(client, project, "KEEP", "original")

    # json.dumps escapes a lone surrogate as \ud800, which httpx's own encoder cannot write.
    headers = {**auth(project), "Content-Type": "application/json"}
    response = await client.put(f"/api/secrets/{secret['id']}", content=json.dumps(payload), headers=headers)
    as_create = await client.post(
        "/api/secrets", content=json.dumps({"name": "NEW", **payload}), headers=headers
    )

    assert response.status_code == as_create.status_code == 422
    assert response.json()["error"] == "Unprocessable Entity"
    assert response.json()["message"].startswith("value")
    assert (await client.get(f"/api/secrets/{secret['id']}", headers=auth(project))).json() == secret
    assert await stored_value(settings, secret) == "original"
    assert await events_for(settings, secret["id"]) == ["secret.created"]


async def test_update_accepts_the_longest_value_in_code_points(
    client: httpx.AsyncClient, settings: Settings, project: dict[str, str]
) -> None:
    secret = await created(client, project, "LONG", "v")
    response = await client.put(
        f"/api/secrets/{secret['id']}", json={"value": "é" * 10000}, headers=auth(project)
    )
    assert response.status_code == 200
    assert await stored_value(settings, response.json()) == "é" * 10000


async def test_longest_value_is_accepted_as_any_client_encodes_it(
    client: httpx.AsyncClient, settings: Settings, project: dict[str, str]
) -> None:
    # Python's json.dumps, requests and many other clients escape non-ASCII (ensure_ascii):
    # 10000 emoji become 120 kB of \ud83d\ude00 pairs, still a value the contract allows.
    value = "😀" * 10000
    secret = await created(client, project, "EMOJI", "v")
    headers = {**auth(project), "Content-Type": "application/json"}

    create_response = await client.post(
        "/api/secrets", content=json.dumps({"name": "EMOJI_ESCAPED", "value": value}), headers=headers
    )
    update_response = await client.put(
        f"/api/secrets/{secret['id']}", content=json.dumps({"value": value}), headers=headers
    )

    assert create_response.status_code == 201
    assert update_response.status_code == 200
    assert await stored_value(settings, update_response.json()) == value


# DELETE /api/secrets/{id}


async def test_delete_removes_the_secret(
    client: httpx.AsyncClient, settings: Settings, project: dict[str, str]
) -> None:
    keep = await created(client, project, "KEEP", "v")
    doomed = await created(client, project, "DOOMED", CANARY)

    response = await client.delete(f"/api/secrets/{doomed['id']}", headers=auth(project))

    assert response.status_code == 200
    assert response.json() == {"id": doomed["id"], "deleted": True}
    assert response.headers["cache-control"] == "no-store"
    assert (await client.get(f"/api/secrets/{doomed['id']}", headers=auth(project))).status_code == 404
    assert await listed(client, project) == [keep]
    again = await client.delete(f"/api/secrets/{doomed['id']}", headers=auth(project))
    assert again.status_code == 404
    assert again.json()["error"] == "Not Found"
    assert await events_for(settings, doomed["id"]) == ["secret.created", "secret.deleted"]
    rows = await query(settings, "SELECT COUNT(*) FROM secrets WHERE id = ?", doomed["id"])
    assert rows[0][0] == 0


async def test_a_deleted_name_can_be_used_again(client: httpx.AsyncClient, project: dict[str, str]) -> None:
    first = await created(client, project, "REUSED", "one")
    assert (await client.delete(f"/api/secrets/{first['id']}", headers=auth(project))).status_code == 200
    second = await created(client, project, "REUSED", "two")
    assert second["id"] != first["id"]
    assert await listed(client, project) == [second]


async def test_update_of_a_deleted_secret_is_404(client: httpx.AsyncClient, project: dict[str, str]) -> None:
    secret = await created(client, project, "GONE", "v")
    assert (await client.delete(f"/api/secrets/{secret['id']}", headers=auth(project))).status_code == 200
    response = await client.put(f"/api/secrets/{secret['id']}", json={"value": "w"}, headers=auth(project))
    assert response.status_code == 404
    assert await listed(client, project) == []


# Idempotency-Key


async def created_events(settings: Settings, project_id: str) -> int:
    rows = await query(
        settings,
        "SELECT COUNT(*) FROM outbox o JOIN secrets s ON s.id = o.subject"
        " WHERE o.event_type = 'secret.created' AND s.project_id = ?",
        project_id,
    )
    return int(rows[0][0])


async def test_retry_with_the_same_key_replays_the_first_answer(
    client: httpx.AsyncClient, settings: Settings, project: dict[str, str]
) -> None:
    first = await create(client, project, "RETRIED", CANARY, **{"Idempotency-Key": "req-1"})
    retry = await create(client, project, "RETRIED", CANARY, **{"Idempotency-Key": "req-1"})

    assert first.status_code == retry.status_code == 201
    assert retry.json() == first.json()
    assert retry.headers["location"] == first.headers["location"]
    assert CANARY not in retry.text
    assert await listed(client, project) == [first.json()]
    assert await created_events(settings, project["projectId"]) == 1
    assert await events_for(settings, first.json()["id"]) == ["secret.created"]


@pytest.mark.parametrize(
    ("name", "value"), [("RETRIED", "other-value"), ("OTHER_NAME", "v")], ids=["value", "name"]
)
async def test_same_key_with_a_different_body_is_422(
    client: httpx.AsyncClient, settings: Settings, project: dict[str, str], name: str, value: str
) -> None:
    first = await create(client, project, "RETRIED", "v", **{"Idempotency-Key": "req-1"})
    other = await create(client, project, name, value, **{"Idempotency-Key": "req-1"})

    assert first.status_code == 201
    assert other.status_code == 422
    assert other.json()["error"] == "Unprocessable Entity"
    assert "other-value" not in other.text
    assert await listed(client, project) == [first.json()]
    assert await stored_value(settings, first.json()) == "v"
    assert await created_events(settings, project["projectId"]) == 1


async def test_projects_may_use_the_same_key(
    client: httpx.AsyncClient, project: dict[str, str], other_project: dict[str, str]
) -> None:
    mine = await create(client, project, "SAME", "v", **{"Idempotency-Key": "shared-key"})
    theirs = await create(client, other_project, "SAME", "w", **{"Idempotency-Key": "shared-key"})

    assert mine.status_code == theirs.status_code == 201
    assert mine.json()["id"] != theirs.json()["id"]
    assert await listed(client, project) == [mine.json()]
    assert await listed(client, other_project) == [theirs.json()]


async def test_another_key_of_the_project_can_neither_replay_nor_probe_a_keys_record(
    client: httpx.AsyncClient, settings: Settings, project: dict[str, str]
) -> None:
    """An Idempotency-Key record answers only the API key that made it: it is no oracle for a value."""
    other_key = await issue_key(settings, project["projectId"], "secrets:manage")
    first = await create(client, project, "GUESSED", "hunter2", **{"Idempotency-Key": "k-1"})
    assert first.status_code == 201

    right_guess = await create(client, other_key, "GUESSED", "hunter2", **{"Idempotency-Key": "k-1"})
    wrong_guess = await create(client, other_key, "GUESSED", "wrong", **{"Idempotency-Key": "k-1"})

    assert right_guess.status_code == wrong_guess.status_code == 409, "both are fresh creates of a taken name"
    assert right_guess.json() == wrong_guess.json()
    assert "idempotent-replayed" not in right_guess.headers
    retry = await create(client, project, "GUESSED", "hunter2", **{"Idempotency-Key": "k-1"})
    assert retry.status_code == 201 and retry.headers["idempotent-replayed"] == "true"
    # After a delete, the other key's request is a create of its own, not a replay of the first.
    assert (
        await client.delete(f"/api/secrets/{first.json()['id']}", headers=auth(project))
    ).status_code == 200
    fresh = await create(client, other_key, "GUESSED", "hunter2", **{"Idempotency-Key": "k-1"})
    assert fresh.status_code == 201 and fresh.json()["id"] != first.json()["id"]
    assert "idempotent-replayed" not in fresh.headers


async def test_fingerprints_are_bound_to_project_and_key_and_keyed_apart_from_key_hashes(
    client: httpx.AsyncClient, settings: Settings, project: dict[str, str], other_project: dict[str, str]
) -> None:
    from service.crypto import keyed_fingerprint

    for owner in (project, other_project):
        assert (
            await create(client, owner, "SAME", "same-value", **{"Idempotency-Key": "k"})
        ).status_code == 201
    rows = await query(settings, "SELECT fingerprint FROM idempotency_keys ORDER BY project_id")
    fingerprints = {row[0] for row in rows}
    assert len(fingerprints) == 2, "the same request in two projects leaves two different fingerprints"
    unbound = keyed_fingerprint(
        settings.api_key_hash_key.reveal(), b"POST /api/secrets", b"SAME", b"same-value"
    )
    assert unbound not in fingerprints


async def keyed_burst(
    client: httpx.AsyncClient,
    project: dict[str, str],
    other_project: dict[str, str],
    names: list[str],
    key: str,
) -> list[httpx.Response]:
    """Creates with one Idempotency-Key, sent at once behind one create of another project.

    While that create holds the writer, the keyed ones queue up and commit together (the
    plans' handling of one batch is unit-tested in tests/secrets/test_writes.py).
    """
    responses = await asyncio.gather(
        create(client, other_project, f"FILLER_{uuid.uuid4().hex[:8].upper()}", "v"),
        *(create(client, project, name, "v", **{"Idempotency-Key": key}) for name in names),
    )
    return responses[1:]


async def test_concurrent_retries_with_one_key_create_one_secret(
    client: httpx.AsyncClient, settings: Settings, project: dict[str, str], other_project: dict[str, str]
) -> None:
    for attempt in range(3):
        responses = await keyed_burst(
            client, project, other_project, [f"RACED_{attempt}"] * 10, f"race-{attempt}"
        )

        assert [r.status_code for r in responses] == [201] * 10
        assert len({r.json()["id"] for r in responses}) == 1
        assert responses[0].json() in await listed(client, project)
    assert len(await listed(client, project)) == 3
    assert await created_events(settings, project["projectId"]) == 3


async def test_concurrent_requests_with_one_key_and_different_bodies_create_one_secret(
    client: httpx.AsyncClient, settings: Settings, project: dict[str, str], other_project: dict[str, str]
) -> None:
    for attempt in range(3):
        names = [f"RACED_{attempt}_{i}" for i in range(10)]
        responses = await keyed_burst(client, project, other_project, names, f"race-{attempt}")

        codes = sorted(r.status_code for r in responses)
        assert codes[0] == 201 and set(codes[1:]) <= {409, 422}, codes
        assert len(await listed(client, project)) == attempt + 1
    assert await created_events(settings, project["projectId"]) == 3


async def test_concurrent_creates_of_one_name_with_distinct_keys_give_one_201(
    client: httpx.AsyncClient, project: dict[str, str]
) -> None:
    responses = await asyncio.gather(
        *(create(client, project, "ONE_NAME", "v", **{"Idempotency-Key": f"key-{i}"}) for i in range(10))
    )

    winners = [r.json() for r in responses if r.status_code == 201]
    # Every 201 names a secret that exists.
    for body in winners:
        assert (await client.get(f"/api/secrets/{body['id']}", headers=auth(project))).status_code == 200
    assert sorted(r.status_code for r in responses) == [201] + [409] * 9
    assert await listed(client, project) == winners


@pytest.mark.parametrize(
    "key", ["", " ", "x" * 256, "tab\there", "é"], ids=["empty", "space", "long", "tab", "non-ascii"]
)
async def test_malformed_idempotency_key_is_400(
    client: httpx.AsyncClient, project: dict[str, str], key: str
) -> None:
    response = await client.post(
        "/api/secrets",
        json={"name": "A", "value": "v"},
        headers=[*auth(project).items(), ("Idempotency-Key", key.encode())],  # type: ignore[list-item]
    )
    assert response.status_code == 400
    assert response.json()["error"] == "Bad Request"
    assert await listed(client, project) == []


# Quota


async def test_quota_holds_under_concurrent_creates(
    quota_client: httpx.AsyncClient, quota_settings: Settings
) -> None:
    full = await make_project(quota_settings, "full")
    other = await make_project(quota_settings, "other")

    responses = await asyncio.gather(*(create(quota_client, full, f"S_{i:02}", "v") for i in range(20)))

    codes = sorted(r.status_code for r in responses)
    assert codes == [201] * QUOTA + [422] * (20 - QUOTA)
    refused = next(r for r in responses if r.status_code == 422).json()
    assert refused["error"] == "Unprocessable Entity"
    assert len(await listed(quota_client, full)) == QUOTA
    assert await created_events(quota_settings, full["projectId"]) == QUOTA
    # Another project has its own quota.
    others = [await create(quota_client, other, f"O_{i}", "v") for i in range(QUOTA + 1)]
    assert [r.status_code for r in others] == [201] * QUOTA + [422]


async def test_quota_frees_up_after_a_delete(
    quota_client: httpx.AsyncClient, quota_settings: Settings
) -> None:
    project = await make_project(quota_settings, "p")
    secrets = [await created(quota_client, project, f"S_{i}", "v") for i in range(QUOTA)]
    assert (await create(quota_client, project, "ONE_MORE", "v")).status_code == 422
    assert (
        await quota_client.delete(f"/api/secrets/{secrets[0]['id']}", headers=auth(project))
    ).status_code == 200
    assert (await create(quota_client, project, "ONE_MORE", "v")).status_code == 201


async def test_a_create_refused_by_the_quota_is_not_replayed_as_created(
    quota_client: httpx.AsyncClient, quota_settings: Settings
) -> None:
    project = await make_project(quota_settings, "p")
    for i in range(QUOTA):
        await created(quota_client, project, f"S_{i}", "v")

    refused = await create(quota_client, project, "OVER", "v", **{"Idempotency-Key": "over-1"})
    retried = await create(quota_client, project, "OVER", "v", **{"Idempotency-Key": "over-1"})

    assert refused.status_code == 422
    assert retried.status_code == 422, "a retry must not report a secret that was never stored"
    assert len(await listed(quota_client, project)) == QUOTA


# Isolation between projects


async def test_one_projects_key_reaches_nothing_of_another(
    client: httpx.AsyncClient, settings: Settings, project: dict[str, str], other_project: dict[str, str]
) -> None:
    a, b = project, other_project
    theirs = await created(client, b, "SHARED_NAME", CANARY)
    assert (await create(client, b, "KEYED", "v", **{"Idempotency-Key": "k-1"})).status_code == 201
    b_before = await listed(client, b)
    missing = f"/api/secrets/{uuid.uuid4()}"
    url = f"/api/secrets/{theirs['id']}"

    # Every endpoint, with A's key, aimed at B's secret: the answers are those for a secret that does not exist.
    for method, kwargs in [
        ("GET", {}),
        ("PUT", {"json": {"value": "overwritten"}}),
        ("PUT", {"json": {"value": ""}}),
        ("PUT", {"content": b"{", "headers": {"Content-Type": "application/json"}}),
        ("DELETE", {}),
    ]:
        headers = {**auth(a), **kwargs.pop("headers", {})}
        foreign = await client.request(method, url, headers=headers, **kwargs)
        absent = await client.request(method, missing, headers=headers, **kwargs)
        assert (foreign.status_code, foreign.json()) == (absent.status_code, absent.json()), method
        assert foreign.status_code in (400, 404, 422), method
        assert CANARY not in foreign.text

    a_list = await client.get("/api/secrets", headers=auth(a))
    assert a_list.json() == []
    # The same name and the same Idempotency-Key are A's own to use: no conflict, no replay of B's answer.
    mine = await create(client, a, "SHARED_NAME", "mine")
    keyed = await create(client, a, "KEYED", "v", **{"Idempotency-Key": "k-1"})
    assert mine.status_code == keyed.status_code == 201
    assert "idempotent-replayed" not in keyed.headers
    assert keyed.json()["projectId"] == a["projectId"]
    assert {s["id"] for s in await listed(client, a)} == {mine.json()["id"], keyed.json()["id"]}

    # B's secrets are as they were: same metadata (updatedAt included), same value, no events but creation.
    assert await listed(client, b) == b_before
    assert (await client.get(url, headers=auth(b))).json() == theirs
    assert await stored_value(settings, theirs) == CANARY
    assert await events_for(settings, theirs["id"]) == ["secret.created"]


# 401


async def test_every_endpoint_answers_bad_credentials_with_one_401_body(
    client: httpx.AsyncClient, settings: Settings, project: dict[str, str]
) -> None:
    secret = await created(client, project, "GUARDED", "original")
    revoked = await make_project(settings, "revoked")
    assert await revoke_key(settings, revoked["apiKeyId"])
    credentials = {
        "missing": {},
        "empty": {"X-Auth-Token": ""},
        "blank": {"X-Auth-Token": "   "},
        "unknown": {"X-Auth-Token": "sk-lw-" + "A" * 48},
        "revoked": {"X-Auth-Token": revoked["apiKey"]},
        "malformed": {"X-Auth-Token": "not-a-key"},
        "too-long": {"X-Auth-Token": "sk-lw-" + "A" * 500},
        "revoked-bearer": {"Authorization": f"Bearer {revoked['apiKey']}"},
        "empty-bearer": {"Authorization": "Bearer "},
    }
    item = f"/api/secrets/{secret['id']}"
    requests: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", "/api/secrets", {}),
        ("POST", "/api/secrets", {"json": {"name": "INTRUDER", "value": "v"}}),
        ("GET", item, {}),
        ("PUT", item, {"json": {"value": "overwritten"}}),
        ("DELETE", item, {}),
    ]
    for label, headers in credentials.items():
        for method, url, kwargs in requests:
            response = await client.request(method, url, headers=headers, **kwargs)
            assert response.status_code == 401, (label, method, url)
            assert response.json() == UNAUTHORIZED, (label, method, url)

    assert await listed(client, project) == [secret]
    assert await stored_value(settings, secret) == "original"
