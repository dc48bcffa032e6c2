"""The errors a client can act on: one base class, a status code and a message each.

The HTTP room turns them into the one JSON shape `{error, message}`; nothing else
here knows about HTTP. A message goes to the client, so it never holds a value.
"""

from __future__ import annotations


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
