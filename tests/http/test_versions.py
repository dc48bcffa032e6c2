"""Versions of a value: numbered, kept, pruned and scrubbed, restored; ETag and If-Match for safe updates."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.settings import Settings
from tests.support.app import auth, created, make_env, serving
from tests.support.database import is_sqlite, query, stored_value, traceless
from tests.support.leaks import CANARY

KEPT = 3


async def value_of(
    client: httpx.AsyncClient, project: dict[str, str], secret_id: str, version: int
) -> httpx.Response:
    return await client.get(f"/api/secrets/{secret_id}/value?version={version}", headers=auth(project))


async def put(
    client: httpx.AsyncClient, project: dict[str, str], secret_id: str, value: str, **headers: str
) -> httpx.Response:
    return await client.put(
        f"/api/secrets/{secret_id}", json={"value": value}, headers={**auth(project), **headers}
    )


async def changes(settings: Settings, secret_id: str) -> list[tuple[str, dict[str, Any]]]:
    rows = await query(
        settings,
        "SELECT event_type, payload FROM outbox WHERE subject = ? AND event_type <> 'secret.accessed' ORDER BY seq",
        secret_id,
    )
    return [(row[0], json.loads(row[1])) for row in rows]


async def test_create_update_twice_restore_one(
    client: httpx.AsyncClient, settings: Settings, project: dict[str, str]
) -> None:
    secret = await created(client, project, "FLOW", "one")
    assert secret["version"] == 1
    two = await put(client, project, secret["id"], "two")
    three = await put(client, project, secret["id"], "three")
    assert [two.json()["version"], three.json()["version"]] == [2, 3]
    assert (two.headers["etag"], three.headers["etag"]) == ('"2"', '"3"')

    restored = await client.post(f"/api/secrets/{secret['id']}/versions/1/restore", headers=auth(project))

    assert restored.status_code == 200
    assert restored.json()["version"] == 4 and restored.headers["etag"] == '"4"'
    assert {k: restored.json()[k] for k in ("id", "name", "createdAt")} == {
        k: secret[k] for k in ("id", "name", "createdAt")
    }
    values = {v: (await value_of(client, project, secret["id"], v)).json()["value"] for v in (1, 2, 3, 4)}
    assert values == {1: "one", 2: "two", 3: "three", 4: "one"}
    current = (await client.get("/api/secrets/by-name/FLOW/value", headers=auth(project))).json()
    assert (current["value"], current["version"]) == ("one", 4)
    versions = (await client.get(f"/api/secrets/{secret['id']}/versions", headers=auth(project))).json()
    assert [v["version"] for v in versions] == [4, 3, 2, 1]
    assert versions[0]["createdAt"] == restored.json()["updatedAt"]
    assert versions[-1]["createdAt"] == secret["createdAt"]
    assert all(set(v) == {"version", "createdAt"} for v in versions)
    got = await client.get(f"/api/secrets/{secret['id']}", headers=auth(project))
    assert got.json()["version"] == 4 and got.headers["etag"] == '"4"'

    events = await changes(settings, secret["id"])
    assert [(t, e["version"]) for t, e in events] == [
        ("secret.created", 1),
        ("secret.updated", 2),
        ("secret.updated", 3),
        ("secret.updated", 4),
    ]
    assert events[3][1]["restoredFrom"] == 1
    assert all("restoredFrom" not in e for _, e in events[:3])


@pytest.fixture
def kept_settings(database_url: str) -> Settings:
    return Settings.from_env(make_env(database_url, SECRET_VERSIONS_KEPT=str(KEPT)))


@pytest.fixture
async def kept_client(kept_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(kept_settings) as http:
        yield http


async def test_versions_past_the_kept_number_are_gone_and_scrubbed(
    kept_client: httpx.AsyncClient, kept_settings: Settings, tmp_path: Path
) -> None:
    from tests.support.app import make_project

    project = await make_project(kept_settings, "p")
    secret = await created(kept_client, project, "PRUNED", f"{CANARY}-v1")
    first_sealed = bytes(
        (await query(kept_settings, "SELECT sealed_value FROM secrets WHERE id = ?", secret["id"]))[0][0]
    )
    for version in range(2, 7):
        assert (await put(kept_client, project, secret["id"], f"{CANARY}-v{version}")).status_code == 200

    versions = (await kept_client.get(f"/api/secrets/{secret['id']}/versions", headers=auth(project))).json()
    assert [v["version"] for v in versions] == [6, 5, 4]
    for pruned in (1, 2, 3):
        gone = await value_of(kept_client, project, secret["id"], pruned)
        assert gone.status_code == 410, pruned
        assert gone.json()["error"] == "Gone"
        restore = await kept_client.post(
            f"/api/secrets/{secret['id']}/versions/{pruned}/restore", headers=auth(project)
        )
        assert restore.status_code == 410
    never = await value_of(kept_client, project, secret["id"], 7)
    assert never.status_code == 404 and never.json()["error"] == "secret_not_found"
    assert (await value_of(kept_client, project, secret["id"], 4)).json()["value"] == f"{CANARY}-v4"
    assert await stored_value(kept_settings, {**secret, "version": 6}) == f"{CANARY}-v6"
    if is_sqlite(kept_settings):
        # Within a second of the prune, the database file and its WAL hold no trace of the
        # pruned version's ciphertext (the WAL is checkpointed at most SCRUB_WITHIN_SECONDS late).
        await traceless(tmp_path, first_sealed[-48:])


async def test_concurrent_updates_of_many_secrets_each_keep_their_own_versions(
    kept_client: httpx.AsyncClient, kept_settings: Settings
) -> None:
    """Updates that share commits (the committer plans distinct secrets together) stay each its own."""
    from tests.support.app import make_project

    project = await make_project(kept_settings, "p")
    secrets = [await created(kept_client, project, f"MANY_{i}", "v1") for i in range(12)]
    ids = [secret["id"] for secret in secrets]
    guarded = await created(kept_client, project, "GUARDED", "v1")
    assert (await put(kept_client, project, guarded["id"], "v2")).status_code == 200
    for version in range(2, 7):
        answers = await asyncio.gather(
            *(put(kept_client, project, i, f"{i}-v{version}") for i in ids),
            put(kept_client, project, guarded["id"], "stale", **{"If-Match": '"1"'}),
            put(kept_client, project, "0190f0f0-0000-7000-8000-000000000000", "nobody's"),
        )
        assert [a.status_code for a in answers] == [200] * len(ids) + [412, 404]
        assert {a.json()["version"] for a in answers[: len(ids)]} == {version}

    for i in ids:
        versions = (await kept_client.get(f"/api/secrets/{i}/versions", headers=auth(project))).json()
        assert [v["version"] for v in versions] == [6, 5, 4]
        for version in (4, 5, 6):
            assert (await value_of(kept_client, project, i, version)).json()["value"] == f"{i}-v{version}"
        assert (await value_of(kept_client, project, i, 3)).status_code == 410
        assert [(t, e["version"]) for t, e in await changes(kept_settings, i)] == [
            ("secret.created", 1),
            *(("secret.updated", v) for v in range(2, 7)),
        ]


async def test_delete_forgets_every_version(
    client: httpx.AsyncClient, settings: Settings, project: dict[str, str]
) -> None:
    secret = await created(client, project, "DOOMED", "one")
    await put(client, project, secret["id"], "two")
    deleted = await client.delete(f"/api/secrets/{secret['id']}", headers=auth(project))
    assert deleted.status_code == 200 and deleted.headers["etag"] == '"2"'
    assert (
        await query(settings, "SELECT version FROM secret_versions WHERE secret_id = ?", secret["id"]) == []
    )
    assert (
        await client.get(f"/api/secrets/{secret['id']}/versions", headers=auth(project))
    ).status_code == 404
    # A new secret of the same name starts again at version 1.
    assert (await created(client, project, "DOOMED", "again"))["version"] == 1


async def test_if_match_applies_a_change_only_to_the_version_it_names(
    client: httpx.AsyncClient, settings: Settings, project: dict[str, str]
) -> None:
    secret = await created(client, project, "GUARDED", "one")
    assert (await put(client, project, secret["id"], "two")).status_code == 200

    stale = await put(client, project, secret["id"], "lost", **{"If-Match": '"1"'})
    assert stale.status_code == 412
    assert stale.headers["etag"] == '"2"'
    assert stale.json()["error"] == "Precondition Failed"
    stale_delete = await client.delete(
        f"/api/secrets/{secret['id']}", headers={**auth(project), "If-Match": '"1"'}
    )
    assert stale_delete.status_code == 412
    weak = await put(client, project, secret["id"], "lost", **{"If-Match": 'W/"2"'})
    assert weak.status_code == 412, "If-Match compares strongly: a weak tag never matches"
    assert await stored_value(settings, {**secret, "version": 2}) == "two"

    fresh = await put(client, project, secret["id"], "three", **{"If-Match": '"1", "2"'})
    assert fresh.status_code == 200 and fresh.json()["version"] == 3
    anything = await put(client, project, secret["id"], "four", **{"If-Match": "*"})
    assert anything.status_code == 200 and anything.json()["version"] == 4
    unreadable = await put(client, project, secret["id"], "x", **{"If-Match": "4"})
    assert unreadable.status_code == 412, "a condition that is not an entity tag never holds"
    missing = await client.put(
        "/api/secrets/018f0000-0000-7000-8000-000000000000",
        json={"value": "x"},
        headers={**auth(project), "If-Match": '"1"'},
    )
    assert missing.status_code == 412
    deleted = await client.delete(
        f"/api/secrets/{secret['id']}", headers={**auth(project), "If-Match": '"4"'}
    )
    assert deleted.status_code == 200


async def test_fifty_concurrent_puts_with_one_if_match_give_one_200(
    client: httpx.AsyncClient, settings: Settings, project: dict[str, str]
) -> None:
    secret = await created(client, project, "RACED", "v1")

    responses = await asyncio.gather(
        *(put(client, project, secret["id"], f"writer-{i}", **{"If-Match": '"1"'}) for i in range(50))
    )

    codes = sorted(r.status_code for r in responses)
    assert codes == [200] + [412] * 49
    winner = next(r for r in responses if r.status_code == 200)
    assert all(r.headers["etag"] == '"2"' for r in responses)
    value = (await client.get(f"/api/secrets/{secret['id']}/value", headers=auth(project))).json()
    assert value["version"] == 2
    assert f"writer-{value['value'].removeprefix('writer-')}" == value["value"]
    assert winner.json()["version"] == 2
    assert [t for t, _ in await changes(settings, secret["id"])] == ["secret.created", "secret.updated"]


async def test_concurrent_puts_without_if_match_all_land_as_consecutive_versions(
    client: httpx.AsyncClient, settings: Settings, project: dict[str, str]
) -> None:
    secret = await created(client, project, "LAST_WINS", "v1")

    responses = await asyncio.gather(*(put(client, project, secret["id"], f"writer-{i}") for i in range(20)))

    assert [r.status_code for r in responses] == [200] * 20
    assert sorted(r.json()["version"] for r in responses) == list(range(2, 22))
    last = max(responses, key=lambda r: r.json()["version"])
    current = (await client.get(f"/api/secrets/{secret['id']}/value", headers=auth(project))).json()
    assert current["version"] == 21
    # The value of the highest version is the one its writer sent.
    writer = responses.index(last)
    assert current["value"] == f"writer-{writer}"
