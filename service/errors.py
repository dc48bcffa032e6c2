"""The service's error types and the one JSON shape they answer with."""

from __future__ import annotations

import logging
from http import HTTPStatus

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from service.responses import JSONResponse

logger = logging.getLogger("service.errors")

NO_STORE = {"Cache-Control": "no-store"}


class ServiceError(Exception):
    """An error a client can act on. Its message goes to the client, so it never holds a value."""

    status_code = 500
    error = "Internal Server Error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(ServiceError):
    status_code = 400
    error = "Bad Request"


class Unauthorized(ServiceError):
    status_code = 401
    error = "Unauthorized"

    def __init__(self) -> None:
        super().__init__("A valid project API key is required in the X-Auth-Token header")


class NotFound(ServiceError):
    status_code = 404
    error = "Not Found"


class Conflict(ServiceError):
    status_code = 409
    error = "Conflict"


class PayloadTooLarge(ServiceError):
    status_code = 413
    error = "Payload Too Large"


class Unprocessable(ServiceError):
    status_code = 422
    error = "Unprocessable Entity"


class ServiceUnavailable(ServiceError):
    status_code = 503
    error = "Service Unavailable"


def error_response(status_code: int, error: str, message: str) -> JSONResponse:
    return JSONResponse({"error": error, "message": message}, status_code, headers=NO_STORE)


async def service_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServiceError)
    return error_response(exc.status_code, exc.error, exc.message)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    response = error_response(exc.status_code, _reason(exc.status_code), exc.detail)
    if exc.headers:
        response.headers.update(exc.headers)
    return response


def _reason(status_code: int) -> str:
    try:
        return HTTPStatus(status_code).phrase
    except ValueError:
        return "Error"
