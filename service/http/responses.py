"""JSON responses (rendered by orjson: about ten times cheaper than json.dumps on the hot path),
the wire shape of a secret, and the one error shape."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse as _StarletteJSONResponse
from starlette.responses import Response

from service.errors import ServiceError
from service.secrets.model import SecretRecord, SecretValue

NO_STORE = {"Cache-Control": "no-store"}


def tagged(version: int) -> dict[str, str]:
    """Headers of an answer about one version of a secret: its ETag, and never cached."""
    return {"ETag": f'"{version}"', **NO_STORE}


class JSONResponse(_StarletteJSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def secret_metadata(record: SecretRecord) -> dict[str, object]:
    """A secret as the API shows it (LangWatch's shape): never its value."""
    return {
        "id": record.id,
        "projectId": record.project_id,
        "name": record.name,
        "createdAt": record.created_at,
        "updatedAt": record.updated_at,
        "version": record.version,
    }


def secret_value(value: SecretValue) -> dict[str, object]:
    """A value read, in LangWatch's shape ({name, value, updatedAt}) plus id and version."""
    return {
        "id": value.id,
        "name": value.name,
        "value": value.value,
        "version": value.version,
        "updatedAt": value.updated_at,
    }


def error_response(status_code: int, error: str, message: str) -> JSONResponse:
    return JSONResponse({"error": error, "message": message}, status_code, headers=NO_STORE)


def answer_for(exc: Exception) -> Response | None:
    """The error answer for a ServiceError (ours) or an HTTPException (the router's 404 and 405), in
    the one error shape; None for any other exception (a fault: the generic 500)."""
    if isinstance(exc, ServiceError):
        response = error_response(exc.status_code, exc.error, exc.message)
    elif isinstance(exc, HTTPException):
        response = error_response(exc.status_code, _reason(exc.status_code), exc.detail)
    else:
        return None
    if exc.headers:
        response.headers.update(exc.headers)
    return response


def _reason(status_code: int) -> str:
    try:
        return HTTPStatus(status_code).phrase
    except ValueError:
        return "Error"
