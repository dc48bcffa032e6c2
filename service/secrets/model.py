"""Secrets as the service holds them: metadata records, values and versions, and their events."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from service.events.model import OutboxEvent, new_event


@dataclass(frozen=True, slots=True)
class SecretRecord:
    """A secret's metadata: everything about it that may leave the service (never its value).

    `version` numbers its value: a create makes version 1, every update the next one.
    """

    id: str
    project_id: str
    name: str
    key_id: str
    created_at: str
    updated_at: str
    version: int = 1


# The columns a SecretRecord is read from, in its fields' order.
SECRET_COLUMNS = "id, project_id, name, key_id, created_at, updated_at, version"


@dataclass(frozen=True, slots=True, repr=False)
class NewSecret:
    """A validated name and value to create; the value never shows in a repr."""

    name: str
    value: str

    def __repr__(self) -> str:
        return f"NewSecret(name={self.name!r}, value='**********')"


@dataclass(frozen=True, slots=True, repr=False)
class SecretValue:
    """One version of a secret's value, as a value read returns it; the value never shows in a repr."""

    id: str
    name: str
    value: str
    version: int
    updated_at: str

    def __repr__(self) -> str:
        return f"SecretValue(id={self.id!r}, name={self.name!r}, version={self.version}, value='**********')"


@dataclass(frozen=True, slots=True)
class VersionInfo:
    version: int
    created_at: str


@dataclass(frozen=True, slots=True)
class IfMatch:
    """An If-Match condition: the versions (entity tags) a change may apply to, or any (`*`)."""

    versions: frozenset[int] = frozenset()
    any: bool = False

    def allows(self, version: int) -> bool:
        """Whether a change may apply to the secret at `version`."""
        return self.any or version in self.versions


@dataclass(frozen=True, slots=True)
class Created:
    record: SecretRecord
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class IdempotencyClaim:
    """An Idempotency-Key record: what a retry with the same key, by the same API key, is answered from."""

    project_id: str
    api_key_id: str
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
            "version": record.version,
        }
    ).decode()


def from_snapshot(text: str) -> SecretRecord:
    body = orjson.loads(text)
    return SecretRecord(
        body["id"],
        body["projectId"],
        body["name"],
        "",
        body["createdAt"],
        body["updatedAt"],
        body.get("version", 1),
    )


def secret_event(
    event_type: str,
    record: SecretRecord,
    *,
    api_key_id: str,
    request_id: str,
    at: str,
    restored_from: int | None = None,
) -> OutboxEvent:
    """A `secret.created`, `.updated` or `.deleted` event: metadata and who changed it, never the value."""
    data: dict[str, Any] = {
        "projectId": record.project_id,
        "name": record.name,
        "createdAt": record.created_at,
        "updatedAt": record.updated_at,
        "secretId": record.id,
        "version": record.version,
        "keyId": record.key_id,
        "actor": {"apiKeyId": api_key_id},
        "requestId": request_id,
    }
    if restored_from is not None:
        data["restoredFrom"] = restored_from
    if event_type == "secret.deleted":
        data["deletedAt"] = at
    return new_event(event_type, record.id, data, at)


def accessed_event(
    project_id: str, secret_id: str, name: str, version: int, *, api_key_id: str, request_id: str, at: str
) -> OutboxEvent:
    """A `secret.accessed` event: which version of which value was read, by whom, when; never the value."""
    data = {
        "projectId": project_id,
        "secretId": secret_id,
        "name": name,
        "version": version,
        "actor": {"apiKeyId": api_key_id},
        "requestId": request_id,
        "accessedAt": at,
    }
    return new_event("secret.accessed", secret_id, data, at)
