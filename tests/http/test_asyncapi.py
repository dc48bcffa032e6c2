"""GET /asyncapi.json: a valid AsyncAPI 3.0 document, and every record the service publishes matches it."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest
from jsonschema import Draft7Validator

from service.secrets.model import SecretRecord, accessed_event, secret_event
from service.settings import Settings
from tests.support.app import auth, created, make_env, make_project, serving
from tests.support.database import pending_events
from tests.support.kafka import record_headers, topic_snapshot
from tests.support.paths import ROOT
from tests.support.waiting import poll_until

META_SCHEMA = ROOT / "tests" / "contract" / "asyncapi-3.0.0.schema.json"


def _validator(schema: dict[str, Any]) -> Draft7Validator:
    return Draft7Validator(schema, format_checker=Draft7Validator.FORMAT_CHECKER)


def _problems(schema: dict[str, Any], instance: Any) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in _validator(schema).iter_errors(instance)
    ]


def messages_by_type(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The document's messages, by the ce_type their headers fix."""
    found = {}
    for message in document["components"]["messages"].values():
        found[message["headers"]["properties"]["ce_type"]["const"]] = message
    return found


async def test_the_document_is_valid_asyncapi_3_for_the_configured_topic(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    response = await client.get("/asyncapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    document = response.json()
    meta_schema = json.loads(META_SCHEMA.read_text())
    assert _problems(meta_schema, document) == []
    (channel,) = document["channels"].values()
    assert channel["address"] == settings.kafka_topic
    assert channel["bindings"]["kafka"]["topic"] == settings.kafka_topic
    assert set(messages_by_type(document)) == {
        "secret.created",
        "secret.updated",
        "secret.deleted",
        "secret.accessed",
    }
    (operation,) = document["operations"].values()
    assert operation["action"] == "send"
    assert len(operation["messages"]) == 4


def test_the_document_does_not_pass_the_meta_schema_when_broken() -> None:
    """The meta-schema check above can fail: a message without a payload type is refused."""
    from service.http.asyncapi import asyncapi_document

    broken = json.loads(json.dumps(asyncapi_document("t", "s")))
    broken["channels"]["secretEvents"]["messages"]["secretCreated"] = {"$ref": 3}
    assert _problems(json.loads(META_SCHEMA.read_text()), broken)


def test_every_payload_field_the_service_writes_is_described() -> None:
    """The payloads as the secrets room builds them (with every optional field) have exactly the documented fields."""
    from service.http.asyncapi import asyncapi_document

    messages = messages_by_type(asyncapi_document("topic", "source"))
    record = SecretRecord(
        "s-1", "project_1", "NAME", "k1", "2030-01-01T00:00:00.000Z", "2030-01-01T00:00:00.000Z", 2
    )
    at = "2030-01-01T00:00:01.000Z"
    built = [
        secret_event("secret.created", record, api_key_id="k", request_id="r", at=at),
        secret_event("secret.updated", record, api_key_id="k", request_id="r", at=at, restored_from=1),
        secret_event("secret.deleted", record, api_key_id="k", request_id="r", at=at),
        accessed_event("project_1", "s-1", "NAME", 2, api_key_id="k", request_id="r", at=at),
    ]
    for event in built:
        payload = json.loads(event.payload)
        schema = messages[event.event_type]["payload"]
        assert set(payload) == set(schema["properties"]), event.event_type
        assert _problems(schema, payload) == [], event.event_type


@pytest.mark.kafka
async def test_records_read_from_the_broker_match_the_document(
    database_url: str, kafka_bootstrap: str
) -> None:
    env = make_env(database_url, KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap, OUTBOX_POLL_SECONDS="0.1")
    settings = Settings.from_env(env)
    project = await make_project(settings, "asyncapi")
    headers = auth(project)
    async with serving(settings) as http:
        document = (await http.get("/asyncapi.json")).json()
        secret = await created(http, project, "DOCUMENTED", "v1")
        path = f"/api/secrets/{secret['id']}"
        assert (await http.put(path, json={"value": "v2"}, headers=headers)).status_code == 200
        assert (await http.post(f"{path}/versions/1/restore", headers=headers)).status_code == 200
        assert (await http.get(f"{path}/value", headers=headers)).status_code == 200
        assert (await http.delete(path, headers=headers)).status_code == 200
        await poll_until(lambda: _drained(settings), 60, what="the outbox to drain")
    records = await topic_snapshot(kafka_bootstrap, settings.kafka_topic)

    messages = messages_by_type(document)
    seen_types = []
    for record in records:
        record_header_names = [name for name, _ in record.headers]
        header_values = record_headers(record)
        message = messages[header_values["ce_type"]]
        seen_types.append(header_values["ce_type"])
        assert len(record_header_names) == len(set(record_header_names)), "a header is repeated"
        assert set(header_values) <= set(message["headers"]["properties"]), "an undocumented header"
        assert _problems(message["headers"], header_values) == []
        key = record.key.decode()
        assert _problems(message["bindings"]["kafka"]["key"], key) == []
        assert key == header_values["ce_subject"] == header_values["ce_partitionkey"] == secret["id"]
        payload = json.loads(record.value)
        assert set(payload) <= set(message["payload"]["properties"]), "an undocumented payload field"
        assert _problems(message["payload"], payload) == []
        assert uuid.UUID(header_values["ce_id"])
    assert seen_types == [
        "secret.created",
        "secret.updated",
        "secret.updated",
        "secret.accessed",
        "secret.deleted",
    ]


async def _drained(settings: Settings) -> bool:
    return await pending_events(settings) == 0
