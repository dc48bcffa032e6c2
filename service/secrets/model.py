"""Secrets as the service holds them: metadata records, new values, and what a create returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from service.events.model import OutboxEvent, new_event


@dataclass(frozen=True, slots=True)
class SecretRecord:
    """A secret's metadata: everything about it that may leave the service."""

    id: str
    project_id: str
    name: str
    key_id: str
    created_at: str
    updated_at: str


# The columns a SecretRecord is read from, in its fields' order.
SECRET_COLUMNS = "id, project_id, name, key_id, created_at, updated_at"


@dataclass(frozen=True, slots=True, repr=False)
class NewSecret:
    """A validated name and value to create; the value never shows in a repr."""

    name: str
    value: str

    def __repr__(self) -> str:
        return f"NewSecret(name={self.name!r}, value='**********')"


@dataclass(frozen=True, slots=True)
class Created:
    record: SecretRecord
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class IdempotencyClaim:
    """An Idempotency-Key record: what a retry with the same key is answered from."""

    project_id: str
    key: str
    fingerprint: str
    status_code: int
    response: str
    created_at: str


def snapshot(record: SecretRecord) -> str:
    """The record as an idempotency claim keeps it, to answer a replay (a stable format of its own)."""
    return orjson.dumps(
        {
            "id": record.id,
            "projectId": record.project_id,
            "name": record.name,
            "createdAt": record.created_at,
            "updatedAt": record.updated_at,
        }
    ).decode()


def from_snapshot(text: str) -> SecretRecord:
    body = orjson.loads(text)
    return SecretRecord(body["id"], body["projectId"], body["name"], "", body["createdAt"], body["updatedAt"])


def secret_event(
    event_type: str, record: SecretRecord, *, api_key_id: str, request_id: str, at: str
) -> OutboxEvent:
    """A `secret.*` event: the secret's metadata and who changed it, never its value."""
    data: dict[str, Any] = {
        "projectId": record.project_id,
        "name": record.name,
        "createdAt": record.created_at,
        "updatedAt": record.updated_at,
        "secretId": record.id,
        "keyId": record.key_id,
        "actor": {"apiKeyId": api_key_id},
        "requestId": request_id,
    }
    if event_type == "secret.deleted":
        data["deletedAt"] = at
    return new_event(event_type, record.id, data, at)
