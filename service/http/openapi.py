"""The service's OpenAPI document.

POST /api/secrets keeps LangWatch's contract (tests/contract/create-secret.openapi.yaml):
the same request and response schemas for its statuses, with additions a client of
this service can rely on: an optional Idempotency-Key header, a required body, the
255-character name limit the server enforces, a `version` in the metadata, and the
403, 413, 503 answers. Each operation's security requirement names the scope it needs
(OpenAPI 3.1 allows role names for API-key schemes).
"""

from __future__ import annotations

import functools
from typing import Any

from service import __version__

_ERROR = {
    "type": "object",
    "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
    "required": ["error"],
}
_METADATA = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "projectId": {"type": "string"},
        "name": {"type": "string"},
        "createdAt": {"type": "string"},
        "updatedAt": {"type": "string"},
        "version": {
            "type": "integer",
            "minimum": 1,
            "description": "The value's version: 1 at creation, +1 per update.",
        },
    },
    "required": ["id", "projectId", "name", "createdAt", "updatedAt"],
}
_VALUE = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "name": {"type": "string"},
        "value": {"type": "string"},
        "version": {"type": "integer", "minimum": 1},
        "updatedAt": {"type": "string", "description": "When this version was written."},
    },
    "required": ["id", "name", "value", "version", "updatedAt"],
}
_VERSIONS = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {"version": {"type": "integer", "minimum": 1}, "createdAt": {"type": "string"}},
        "required": ["version", "createdAt"],
    },
}
_STATUS = {"type": "object", "properties": {"status": {"type": "string"}}, "required": ["status"]}
_REASONS = {
    400: "Bad Request",
    401: "Unauthorized: no valid API key",
    403: "Forbidden: the API key lacks the scope this operation needs",
    404: "Not Found",
    409: "Secret with this name already exists",
    410: "Gone: that version is no longer kept",
    412: "Precondition Failed: If-Match names another version (the answer's ETag is the current one)",
    413: "Request body too large",
    422: "Unprocessable Entity",
    429: "Too Many Requests: the API key is over its rate limit (per replica); retry after Retry-After seconds",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_VALUE_REASONS = {
    404: "secret_not_found: no such secret (or version) in this project",
    500: "secret_value_unreadable: the stored value could not be decrypted (a platform fault)",
}
_ETAG = {"ETag": {"description": 'The version, as an entity tag: "3"', "schema": {"type": "string"}}}
_NO_STORE = {"Cache-Control": {"description": "no-store", "schema": {"type": "string"}}}
_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
_IF_MATCH = {
    "name": "If-Match",
    "in": "header",
    "required": False,
    "description": 'Apply only to these versions: * or entity tags such as "3" (as the ETag of a GET); '
    "a tag that names no current version, or is not an entity tag, fails with 412. "
    "Without it, the last writer wins.",
    "schema": {"type": "string", "pattern": "^[\\x20-\\x7e\\t]*$"},
}
_NAME = {"type": "string", "pattern": "^[A-Z][A-Z0-9_]*$", "minLength": 1, "maxLength": 255}
_VALUE_STRING = {"type": "string", "minLength": 1, "maxLength": 10000}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _errors(*codes: int, reasons: dict[int, str] | None = None) -> dict[str, Any]:
    """Error answers; an operation that authenticates (401) is also rate limited (429)."""
    reasons = {**_REASONS, **(reasons or {})}
    answers = {str(code): {"description": reasons[code], **_json(_ERROR)} for code in codes}
    if 401 in codes:
        retry_after = {"description": "Seconds to wait", "schema": {"type": "string"}}
        answers["429"] = {
            "description": reasons[429],
            **_json(_ERROR),
            "headers": {"Retry-After": retry_after},
        }
    return dict(sorted(answers.items()))


def _needs(scope: str) -> list[dict[str, list[str]]]:
    return [{"project_api_key": [scope]}]


def _ok(description: str, schema: dict[str, Any], headers: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description, **_json(schema), "headers": headers or _NO_STORE}


@functools.cache
def openapi_document() -> dict[str, Any]:
    create_body = {
        "type": "object",
        "properties": {"name": _NAME, "value": _VALUE_STRING},
        "required": ["name", "value"],
    }
    update_body = {"type": "object", "properties": {"value": _VALUE_STRING}, "required": ["value"]}
    version_number = {"type": "integer", "minimum": 1, "maximum": 2**53 - 1}
    version_path = {"name": "version", "in": "path", "required": True, "schema": version_number}
    version_query = {
        "name": "version",
        "in": "query",
        "required": False,
        "description": "A kept version; the current one when absent.",
        "schema": version_number,
    }
    deleted = {
        "type": "object",
        "properties": {"id": {"type": "string"}, "deleted": {"type": "boolean"}},
        "required": ["id", "deleted"],
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Secrets service",
            "version": __version__,
            "description": "Project-scoped secrets, wire-compatible with LangWatch's secrets API. "
            "API keys hold scopes: secrets:view (list, get, versions), secrets:read (view, plus value "
            "reads), secrets:manage (everything). Every value read is audited by a secret.accessed event.",
        },
        "security": [{"project_api_key": []}],
        "paths": {
            "/api/secrets": {
                "post": {
                    "description": "Create a new project secret. The value is encrypted at rest and never returned.",
                    "operationId": "postApiSecrets",
                    "security": _needs("secrets:manage"),
                    "parameters": [
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "required": False,
                            "schema": {"type": "string", "pattern": "^[\\x21-\\x7e]{1,255}$"},
                        }
                    ],
                    "requestBody": {"required": True, **_json(create_body)},
                    "responses": {
                        "201": {
                            "description": "Secret created",
                            **_json(_METADATA),
                            "headers": {**_ETAG, **_NO_STORE},
                        },
                        **_errors(400, 401, 403, 409, 413, 422, 500, 503),
                    },
                },
                "get": {
                    "description": "List the project's secrets, ordered by name. Values are never returned.",
                    "operationId": "getApiSecrets",
                    "security": _needs("secrets:view"),
                    "responses": {
                        "200": _ok("The project's secrets", {"type": "array", "items": _METADATA}),
                        **_errors(401, 403, 500, 503),
                    },
                },
            },
            "/api/secrets/{id}": {
                "parameters": [_ID],
                "get": {
                    "description": "One secret's metadata; the ETag is its version.",
                    "operationId": "getApiSecretsById",
                    "security": _needs("secrets:view"),
                    "responses": {
                        "200": _ok("The secret", _METADATA, {**_ETAG, **_NO_STORE}),
                        **_errors(401, 403, 404, 500, 503),
                    },
                },
                "put": {
                    "description": "Replace a secret's value with a new version. The name stays.",
                    "operationId": "putApiSecretsById",
                    "security": _needs("secrets:manage"),
                    "parameters": [_IF_MATCH],
                    "requestBody": {"required": True, **_json(update_body)},
                    "responses": {
                        "200": _ok("Secret updated", _METADATA, {**_ETAG, **_NO_STORE}),
                        **_errors(400, 401, 403, 404, 412, 413, 422, 500, 503),
                    },
                },
                "delete": {
                    "description": "Delete a secret, and every kept version of its value.",
                    "operationId": "deleteApiSecretsById",
                    "security": _needs("secrets:manage"),
                    "parameters": [_IF_MATCH],
                    "responses": {
                        "200": _ok("Secret deleted", deleted, {**_ETAG, **_NO_STORE}),
                        **_errors(401, 403, 404, 412, 500, 503),
                    },
                },
            },
            "/api/secrets/{id}/value": {
                "parameters": [_ID],
                "get": {
                    "description": "A secret's value (the current version, or ?version=N), audited.",
                    "operationId": "getApiSecretsByIdValue",
                    "security": _needs("secrets:read"),
                    "parameters": [version_query],
                    "responses": {
                        "200": _ok("The value", _VALUE, {**_ETAG, **_NO_STORE}),
                        **_errors(400, 401, 403, 404, 410, 500, 503, reasons=_VALUE_REASONS),
                    },
                },
            },
            "/api/secrets/{id}/versions": {
                "parameters": [_ID],
                "get": {
                    "description": "The kept versions of a secret's value, newest first. Never a value.",
                    "operationId": "getApiSecretsByIdVersions",
                    "security": _needs("secrets:view"),
                    "responses": {"200": _ok("The versions", _VERSIONS), **_errors(401, 403, 404, 500, 503)},
                },
            },
            "/api/secrets/{id}/versions/{version}/restore": {
                "parameters": [_ID, version_path],
                "post": {
                    "description": "Make a new version equal to a kept one (secret.updated with restoredFrom).",
                    "operationId": "postApiSecretsByIdVersionsByVersionRestore",
                    "security": _needs("secrets:manage"),
                    "parameters": [_IF_MATCH],
                    "responses": {
                        "200": _ok("Restored as a new version", _METADATA, {**_ETAG, **_NO_STORE}),
                        **_errors(400, 401, 403, 404, 410, 412, 422, 500, 503),
                    },
                },
            },
            "/api/secrets/by-name/{name}/value": {
                "parameters": [
                    {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "get": {
                    "description": "A secret's current value, by name (LangWatch's route), audited.",
                    "operationId": "getApiSecretsByNameValue",
                    "security": _needs("secrets:read"),
                    "responses": {
                        "200": _ok("The value", _VALUE, {**_ETAG, **_NO_STORE}),
                        **_errors(401, 403, 404, 500, 503, reasons=_VALUE_REASONS),
                    },
                },
            },
            "/asyncapi.json": {
                "get": {
                    "description": "The AsyncAPI 3.0 document of the event topic: the channel, one message per "
                    "ce_type (secret.created, .updated, .deleted, .accessed) with its headers, key and payload schema.",
                    "operationId": "getAsyncapi",
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "The AsyncAPI document",
                            **_json(
                                {
                                    "type": "object",
                                    "properties": {
                                        "asyncapi": {"type": "string", "const": "3.0.0"},
                                        "info": {"type": "object"},
                                        "channels": {"type": "object"},
                                        "operations": {"type": "object"},
                                        "components": {"type": "object"},
                                    },
                                    "required": ["asyncapi", "info", "channels", "operations", "components"],
                                }
                            ),
                        },
                        **_errors(500, 503),
                    },
                }
            },
            "/healthz": {
                "get": {
                    "description": "Liveness: the process answers.",
                    "operationId": "getHealthz",
                    "security": [],
                    "responses": {"200": _ok("Alive", _STATUS), **_errors(500, 503)},
                }
            },
            "/readyz": {
                "get": {
                    "description": "Readiness: not draining, the database answers with its schema current, "
                    "and its storage has room.",
                    "operationId": "getReadyz",
                    "security": [],
                    "responses": {"200": _ok("Ready", _STATUS), **_errors(500, 503)},
                }
            },
        },
        "components": {
            "securitySchemes": {
                "project_api_key": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-Auth-Token",
                    "description": "Project API key, sk-lw-... (no underscore). Authorization: Bearer sk-lw-... works too.",
                }
            }
        },
    }
