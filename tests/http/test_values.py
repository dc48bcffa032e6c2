"""Value reads: the exact value back, audited by one secret.accessed event per answer, and the faults."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid

import httpx
import pytest

from service.settings import Settings
from tests.support.app import auth, created, issue_key
from tests.support.database import execute, query
from tests.support.leaks import CANARY, leaked

VALUES = {
    "emoji": "🔑😀 emoji ✓",
    "nul": "a\x00b\x00",
    "longest": "é" * 9999 + "😀",
    "control-and-rtl": "\t\n\r\x1b[0m\u202e\ufeff",
    "json-looking": '{"value": "x"}',
}


async def accessed_events(settings: Settings, secret_id: str) -> list[dict[str, object]]:
    rows = await query(
        settings,
        "SELECT payload FROM outbox WHERE subject = ? AND event_type = 'secret.accessed' ORDER BY seq",
        secret_id,
    )
    return [json.loads(row[0]) for row in rows]


@pytest.mark.parametrize("value", VALUES.values(), ids=VALUES.keys())
async def test_a_value_comes_back_exactly_as_stored(
    client: httpx.AsyncClient, settings: Settings, project: dict[str, str], value: str
) -> None:
    secret = await created(client, project, "EXACT", value)

    by_name = await client.get("/api/secrets/by-name/EXACT/value", headers=auth(project))
    by_id = await client.get(f"/api/secrets/{secret['id']}/value", headers=auth(project))

    for response in (by_name, by_id):
        assert response.status_code == 200
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["etag"] == '"1"'
        assert response.json() == {
            "id": secret["id"],
            "name": "EXACT",
            "value": value,
            "version": 1,
            "updatedAt": secret["updatedAt"],
        }
    assert len(await accessed_events(settings, secret["id"])) == 2


async def test_every_answered_read_has_exactly_one_audit_event_naming_who_and_which_version(
    client: httpx.AsyncClient, settings: Settings, project: dict[str, str]
) -> None:
    reader = await issue_key(settings, project["projectId"], "secrets:read")
    secret = await created(client, project, "AUDITED", CANARY)
    await client.put(f"/api/secrets/{secret['id']}", json={"value": CANARY + "2"}, headers=auth(project))

    reads = await asyncio.gather(
        *(
            client.get(
                "/api/secrets/by-name/AUDITED/value"
                if i % 2
                else f"/api/secrets/{secret['id']}/value?version=1",
                headers={**auth(reader), "X-Request-ID": f"read-{i}"},
            )
            for i in range(40)
        )
    )

    assert [r.status_code for r in reads] == [200] * 40
    events = await accessed_events(settings, secret["id"])
    assert sorted(e["requestId"] for e in events) == sorted(f"read-{i}" for i in range(40))
    for event in events:
        i = int(str(event["requestId"]).removeprefix("read-"))
        assert event["version"] == (2 if i % 2 else 1)
        assert event["actor"] == {"apiKeyId": reader["apiKeyId"]}
        assert event["secretId"] == secret["id"] and event["name"] == "AUDITED"
        assert set(event) == {"projectId", "secretId", "name", "version", "actor", "requestId", "accessedAt"}
    rows = await query(settings, "SELECT payload FROM outbox")
    assert not leaked(CANARY, *(row[0] for row in rows)), "an event carries the value"


async def test_concurrent_reads_by_name_each_get_their_own_projects_value(
    client: httpx.AsyncClient, settings: Settings, project: dict[str, str], other_project: dict[str, str]
) -> None:
    """Reads by name share a statement when they share a commit: names alike across projects stay apart."""
    ours = {n: await created(client, project, f"SHARED_{n}", f"ours-{n}") for n in range(5)}
    theirs = {n: await created(client, other_project, f"SHARED_{n}", f"theirs-{n}") for n in range(5)}
    asks = [(who, n) for n in [*range(5), 7] for who in (project, other_project)] * 3

    reads = await asyncio.gather(
        *(client.get(f"/api/secrets/by-name/SHARED_{n}/value", headers=auth(who)) for who, n in asks)
    )

    for (who, n), read in zip(asks, reads, strict=True):
        if n == 7:
            assert read.status_code == 404 and read.json()["error"] == "secret_not_found"
            continue
        mine = "ours" if who is project else "theirs"
        assert read.status_code == 200
        assert read.json()["value"] == f"{mine}-{n}"
        assert read.json()["id"] == (ours if who is project else theirs)[n]["id"]
    for n in range(5):
        for secret in (ours[n], theirs[n]):
            assert len(await accessed_events(settings, secret["id"])) == 3


async def test_unknown_names_and_ids_are_langwatchs_404(
    client: httpx.AsyncClient, project: dict[str, str]
) -> None:
    for path in (
        "/api/secrets/by-name/NOPE/value",
        "/api/secrets/by-name/not-a-name/value",
        f"/api/secrets/{uuid.uuid4()}/value",
        "/api/secrets/nope/value",
    ):
        response = await client.get(path, headers=auth(project))
        assert response.status_code == 404, path
        assert response.json()["error"] == "secret_not_found"


async def test_another_projects_values_and_versions_are_not_found(
    client: httpx.AsyncClient, settings: Settings, project: dict[str, str], other_project: dict[str, str]
) -> None:
    theirs = await created(client, other_project, "THEIRS", CANARY)
    await client.put(f"/api/secrets/{theirs['id']}", json={"value": "two"}, headers=auth(other_project))

    for path in (
        "/api/secrets/by-name/THEIRS/value",
        f"/api/secrets/{theirs['id']}/value",
        f"/api/secrets/{theirs['id']}/value?version=1",
        f"/api/secrets/{theirs['id']}/versions",
    ):
        response = await client.get(path, headers=auth(project))
        assert response.status_code == 404, path
        assert CANARY not in response.text
    restore = await client.post(f"/api/secrets/{theirs['id']}/versions/1/restore", headers=auth(project))
    assert restore.status_code == 404
    assert await accessed_events(settings, theirs["id"]) == []


async def test_a_tampered_value_is_a_500_logged_as_a_fault_by_id_never_by_value(
    client: httpx.AsyncClient, settings: Settings, project: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    secret = await created(client, project, "TAMPERED", CANARY)
    sealed = bytes(
        (await query(settings, "SELECT sealed_value FROM secrets WHERE id = ?", secret["id"]))[0][0]
    )
    flipped = sealed[:-1] + bytes((sealed[-1] ^ 1,))
    await execute(settings, "UPDATE secrets SET sealed_value = ? WHERE id = ?", flipped, secret["id"])
    caplog.set_level(logging.DEBUG)

    for path in ("/api/secrets/by-name/TAMPERED/value", f"/api/secrets/{secret['id']}/value"):
        response = await client.get(path, headers=auth(project))
        assert response.status_code == 500
        assert response.json() == {
            "error": "secret_value_unreadable",
            "message": "The stored value could not be decrypted",
        }
    faults = [r for r in caplog.records if r.levelno >= logging.ERROR and "unreadable" in r.getMessage()]
    assert len(faults) == 2 and all(secret["id"] in r.getMessage() for r in faults)
    assert CANARY not in caplog.text
    assert await accessed_events(settings, secret["id"]) == [], "no value left, so no access is recorded"


async def test_a_bad_version_query_is_a_400(client: httpx.AsyncClient, project: dict[str, str]) -> None:
    secret = await created(client, project, "V", "v")
    for version in ("0", "-1", "abc", "1.5", ""):
        response = await client.get(
            f"/api/secrets/{secret['id']}/value?version={version}", headers=auth(project)
        )
        assert response.status_code == 400, version
        assert response.json()["error"] == "Bad Request"


async def test_a_read_whose_audit_cannot_commit_returns_a_503_and_no_value(
    client: httpx.AsyncClient, settings: Settings, project: dict[str, str]
) -> None:
    """The audit row commits before the value is sent: if it cannot, the caller gets a 503 and no value."""
    secret = await created(client, project, "GUARDED", CANARY)
    # The outbox refuses new rows, as a failing disk would.
    if settings.database.dialect == "sqlite":
        await execute(
            settings,
            "CREATE TRIGGER outbox_full BEFORE INSERT ON outbox BEGIN SELECT RAISE(ABORT, 'full'); END",
        )
    else:
        await execute(
            settings,
            "CREATE FUNCTION outbox_full() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'full'; END $$ LANGUAGE plpgsql;"
            " CREATE TRIGGER outbox_full BEFORE INSERT ON outbox FOR EACH ROW EXECUTE FUNCTION outbox_full()",
        )

    for path in ("/api/secrets/by-name/GUARDED/value", f"/api/secrets/{secret['id']}/value"):
        response = await client.get(path, headers=auth(project))
        assert response.status_code == 503, response.text
        assert CANARY not in response.text
        assert response.json()["error"] == "Service Unavailable"
    assert await accessed_events(settings, secret["id"]) == []
