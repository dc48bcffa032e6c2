"""The service's OpenAPI document. POST /api/secrets is LangWatch's contract, word for word."""

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
    },
    "required": ["id", "projectId", "name", "createdAt", "updatedAt"],
}
_REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    409: "Secret with this name already exists",
    413: "Request body too large",
    422: "Unprocessable Entity",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_ID_PARAMETER = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(code): {"description": _REASONS[code], **_json(_ERROR)} for code in codes}


@functools.cache
def openapi_document() -> dict[str, Any]:
    create_body = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "pattern": "^[A-Z][A-Z0-9_]*$", "minLength": 1},
            "value": {"type": "string", "minLength": 1, "maxLength": 10000},
        },
        "required": ["name", "value"],
    }
    update_body = {
        "type": "object",
        "properties": {"value": {"type": "string", "minLength": 1, "maxLength": 10000}},
        "required": ["value"],
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Secrets service",
            "version": __version__,
            "description": "Project-scoped secrets, wire-compatible with LangWatch's secrets API.",
        },
        "security": [{"project_api_key": []}],
        "paths": {
            "/api/secrets": {
                "post": {
                    "description": "Create a new project secret. The value is encrypted at rest and never returned.",
                    "operationId": "postApiSecrets",
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
                        "201": {"description": "Secret created", **_json(_METADATA)},
                        **_errors(400, 401, 409, 413, 422, 500, 503),
                    },
                },
                "get": {
                    "description": "List the project's secrets, ordered by name. Values are never returned.",
                    "operationId": "getApiSecrets",
                    "responses": {
                        "200": {
                            "description": "The project's secrets",
                            **_json({"type": "array", "items": _METADATA}),
                        },
                        **_errors(401, 500, 503),
                    },
                },
            },
            "/api/secrets/{id}": {
                "parameters": [_ID_PARAMETER],
                "get": {
                    "description": "One secret's metadata.",
                    "operationId": "getApiSecretsById",
                    "responses": {
                        "200": {"description": "The secret", **_json(_METADATA)},
                        **_errors(401, 404, 500, 503),
                    },
                },
                "put": {
                    "description": "Replace a secret's value. The name stays.",
                    "operationId": "putApiSecretsById",
                    "requestBody": {"required": True, **_json(update_body)},
                    "responses": {
                        "200": {"description": "Secret updated", **_json(_METADATA)},
                        **_errors(400, 401, 404, 413, 422, 500, 503),
                    },
                },
                "delete": {
                    "description": "Delete a secret and its stored value.",
                    "operationId": "deleteApiSecretsById",
                    "responses": {
                        "200": {
                            "description": "Secret deleted",
                            **_json(
                                {
                                    "type": "object",
                                    "properties": {"id": {"type": "string"}, "deleted": {"type": "boolean"}},
                                    "required": ["id", "deleted"],
                                }
                            ),
                        },
                        **_errors(401, 404, 500, 503),
                    },
                },
            },
            "/healthz": {
                "get": {
                    "description": "Ready to serve: the database answers.",
                    "operationId": "getHealthz",
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "Healthy",
                            **_json(
                                {
                                    "type": "object",
                                    "properties": {"status": {"type": "string"}},
                                    "required": ["status"],
                                }
                            ),
                        },
                        **_errors(500, 503),
                    },
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
