"""The AsyncAPI 3.0 document of the event topic: what a consumer of `secret.*` records can rely on.

One channel (the topic), one message per `ce_type`, each with its CloudEvents headers
(Kafka binary content mode), its record key and a JSON Schema of its payload. Payloads
are open objects (a consumer must ignore fields it does not know), but the tests check
that every field a real record carries is described here, and that every record read
from the broker validates.
"""

from __future__ import annotations

import functools
from typing import Any

from service import __version__

ASYNCAPI_VERSION = "3.0.0"
KAFKA_BINDING_VERSION = "0.5.0"

_TIME = {"type": "string", "format": "date-time", "description": "ISO 8601, UTC, milliseconds, Z"}
_SECRET_ID = {"type": "string", "minLength": 1, "description": "The secret's id (also the record key)"}
_FIELDS: dict[str, dict[str, Any]] = {
    "secretId": _SECRET_ID,
    "projectId": {"type": "string", "minLength": 1, "description": "The project the secret belongs to"},
    "name": {"type": "string", "pattern": "^[A-Z][A-Z0-9_]*$", "minLength": 1, "maxLength": 255},
    "createdAt": {**_TIME, "description": "When the secret was created"},
    "updatedAt": {**_TIME, "description": "When the version this event is about was written"},
    "version": {
        "type": "integer",
        "minimum": 1,
        "description": "The value's version this event is about: read it with GET /api/secrets/{id}/value?version=N",
    },
    "keyId": {"type": "string", "description": "The master key that wraps this version's data key"},
    "actor": {
        "type": "object",
        "properties": {"apiKeyId": {"type": "string", "description": "The API key that made the request"}},
        "required": ["apiKeyId"],
    },
    "requestId": {"type": "string", "description": "The X-Request-ID of the request"},
    "restoredFrom": {
        "type": "integer",
        "minimum": 1,
        "description": "On an update made by a restore: the version that was restored",
    },
    "deletedAt": {**_TIME, "description": "When the secret was deleted"},
    "accessedAt": {**_TIME, "description": "When the value was read"},
}
_CHANGE = [
    "secretId",
    "projectId",
    "name",
    "createdAt",
    "updatedAt",
    "version",
    "keyId",
    "actor",
    "requestId",
]

# ce_type -> (component name, title, payload fields, required fields)
_MESSAGES: dict[str, tuple[str, str, list[str], list[str]]] = {
    "secret.created": ("secretCreated", "A secret was created (version 1)", _CHANGE, _CHANGE),
    "secret.updated": (
        "secretUpdated",
        "A secret has a new version (an update, or a restore of a kept version)",
        [*_CHANGE, "restoredFrom"],
        _CHANGE,
    ),
    "secret.deleted": (
        "secretDeleted",
        "A secret and every kept version of its value were deleted",
        [*_CHANGE, "deletedAt"],
        [*_CHANGE, "deletedAt"],
    ),
    "secret.accessed": (
        "secretAccessed",
        "A version of a secret's value was read (audit); never the value",
        ["secretId", "projectId", "name", "version", "actor", "requestId", "accessedAt"],
        ["secretId", "projectId", "name", "version", "actor", "requestId", "accessedAt"],
    ),
}


def _headers(event_type: str, source: str) -> dict[str, Any]:
    """The record's headers: CloudEvents attributes as `ce_` headers (UTF-8 strings), and the media type."""
    return {
        "type": "object",
        "properties": {
            "ce_specversion": {"type": "string", "const": "1.0", "description": "CloudEvents version"},
            "ce_id": {
                "type": "string",
                "format": "uuid",
                "description": "Unique per event (a time-ordered UUIDv7); a repeat of an event repeats its id",
            },
            "ce_source": {
                "type": "string",
                "minLength": 1,
                "description": "EVENT_SOURCE of the service that published it; ce_source + ce_id identify an event",
                "examples": [source],
            },
            "ce_type": {"type": "string", "const": event_type},
            "ce_time": {**_TIME, "description": "When the event happened"},
            "ce_subject": {**_SECRET_ID, "description": "The secret's id"},
            "ce_partitionkey": {
                **_SECRET_ID,
                "description": "CloudEvents partitioning extension: the record key (the secret's id)",
            },
            "content-type": {"type": "string", "const": "application/json"},
        },
        "required": [
            "ce_specversion",
            "ce_id",
            "ce_source",
            "ce_type",
            "ce_time",
            "ce_subject",
            "ce_partitionkey",
            "content-type",
        ],
    }


def _message(event_type: str, source: str) -> dict[str, Any]:
    _, title, fields, required = _MESSAGES[event_type]
    return {
        "name": event_type,
        "title": title,
        "contentType": "application/json",
        "headers": _headers(event_type, source),
        "payload": {
            "type": "object",
            "properties": {field: _FIELDS[field] for field in fields},
            "required": required,
        },
        "correlationId": {
            "description": "The request that caused the event",
            "location": "$message.payload#/requestId",
        },
        "bindings": {
            "kafka": {
                "key": {
                    **_SECRET_ID,
                    "description": "The secret's id: one secret's events share a partition",
                },
                "bindingVersion": KAFKA_BINDING_VERSION,
            }
        },
    }


@functools.cache
def asyncapi_document(topic: str, source: str) -> dict[str, Any]:
    """The document for a topic and an event source (KAFKA_TOPIC and EVENT_SOURCE)."""
    components = {name: _message(event_type, source) for event_type, (name, *_) in _MESSAGES.items()}
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "Secrets service events",
            "version": __version__,
            "description": "Every create, update, delete and value read of a secret, as a CloudEvents 1.0 "
            "record (Kafka binary content mode: attributes in ce_ headers, the JSON data as the value). "
            "Never a value, its ciphertext or a hash of it. Delivery is at least once: drop repeats by "
            "(ce_source, ce_id). One secret's events share a partition (the key is its id) and arrive in "
            "order. Payloads may gain fields: ignore the ones you do not know.",
        },
        "defaultContentType": "application/json",
        "channels": {
            "secretEvents": {
                "address": topic,
                "title": "Secret events",
                "description": "KAFKA_TOPIC of the service",
                "messages": {name: {"$ref": f"#/components/messages/{name}"} for name in components},
                "bindings": {"kafka": {"topic": topic, "bindingVersion": KAFKA_BINDING_VERSION}},
            }
        },
        "operations": {
            "publishSecretEvents": {
                "action": "send",
                "channel": {"$ref": "#/channels/secretEvents"},
                "summary": "The service publishes one record per change or value read, after it commits",
                "messages": [{"$ref": f"#/channels/secretEvents/messages/{name}"} for name in components],
            }
        },
        "components": {"messages": components},
    }
