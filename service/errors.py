"""The service's error types and the one JSON shape they answer with."""

from __future__ import annotations

import logging
import traceback
from http import HTTPStatus

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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


class ServerErrorMiddleware:
    """Turns any unhandled exception into the generic 500 body, and logs it without its message.

    An exception's text can quote driver messages or data, so only its type and
    stack frames are logged; it is not re-raised to the server, which would log it whole.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            frames = "".join(traceback.format_tb(exc.__traceback__))
            logger.error(
                "unhandled %s on %s %s\n%s", type(exc).__name__, scope["method"], scope["path"], frames
            )
            if not started:
                response = error_response(500, "Internal Server Error", "An unexpected error occurred")
                await response(scope, receive, send)


def _reason(status_code: int) -> str:
    try:
        return HTTPStatus(status_code).phrase
    except ValueError:
        return "Error"
