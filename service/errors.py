"""The errors a client can act on: one base class, a status code and a message each.

The HTTP room turns them into the one JSON shape `{error, message}`; nothing else
here knows about HTTP. A message goes to the client, so it never holds a value.
"""

from __future__ import annotations


class ServiceError(Exception):
    """An error a client can act on. Its message goes to the client, so it never holds a value.

    `headers` go out with the answer (an ETag with a 412, a Retry-After with a 429, ...).
    """

    status_code = 500
    error = "Internal Server Error"

    def __init__(self, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class BadRequest(ServiceError):
    status_code = 400
    error = "Bad Request"


class Unauthorized(ServiceError):
    status_code = 401
    error = "Unauthorized"

    def __init__(self) -> None:
        super().__init__(
            "A valid project API key is required, as X-Auth-Token: sk-lw-... or Authorization: Bearer sk-lw-...",
            {"WWW-Authenticate": "Bearer"},
        )


class Forbidden(ServiceError):
    status_code = 403
    error = "Forbidden"


class NotFound(ServiceError):
    status_code = 404
    error = "Not Found"


class SecretNotFound(NotFound):
    """The value routes' 404, with LangWatch's error code."""

    error = "secret_not_found"


class Conflict(ServiceError):
    status_code = 409
    error = "Conflict"


class Gone(ServiceError):
    status_code = 410
    error = "Gone"


class PreconditionFailed(ServiceError):
    status_code = 412
    error = "Precondition Failed"


class PayloadTooLarge(ServiceError):
    status_code = 413
    error = "Payload Too Large"


class Unprocessable(ServiceError):
    status_code = 422
    error = "Unprocessable Entity"


class ValueUnreadable(ServiceError):
    """A stored value that no longer opens (a platform fault, logged as such), with LangWatch's error code."""

    status_code = 500
    error = "secret_value_unreadable"


class ServiceUnavailable(ServiceError):
    status_code = 503
    error = "Service Unavailable"


class StorageFull(ServiceUnavailable):
    """The database's storage is full: writes are refused until space is freed (reads go on)."""

    def __init__(self) -> None:
        super().__init__("Storage is full: writes resume once space is freed; retry later")


class RateLimited(ServiceError):
    status_code = 429
    error = "Too Many Requests"
