"""Typed errors, mapped from the service's `{error, message}` answers.

A message is the service's own (which never quotes a value) or the client's; no
error carries a value or an API key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# The service answers a full project with this 422 message (service/secrets/writes.py).
QUOTA_MESSAGE_PREFIX = "This project has reached its limit"


class SecretsError(Exception):
    """Any failure of a call: `status` (None when no answer came), the service's `error` code and `message`."""

    def __init__(self, message: str, *, status: int | None = None, error: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.error = error

    def __str__(self) -> str:
        return self.message if self.status is None else f"{self.status} {self.error}: {self.message}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status={self.status!r}, error={self.error!r}, message={self.message!r})"
        )


class UnauthorizedError(SecretsError):
    """401: the API key is missing, unknown or revoked."""


class ForbiddenError(SecretsError):
    """403: the API key lacks the scope the call needs (the message names it)."""


class NotFoundError(SecretsError):
    """404: no such secret (or version) in the key's project."""


class ConflictError(SecretsError):
    """409: a secret with this name exists."""


class GoneError(SecretsError):
    """410: that version is no longer kept."""


class PreconditionFailedError(SecretsError):
    """412: If-Match names another version; `current_version` is the secret's version now."""

    def __init__(self, message: str, *, status: int | None = None, error: str | None = None) -> None:
        super().__init__(message, status=status, error=error)
        self.current_version: int | None = None


class InvalidRequestError(SecretsError):
    """400, 413 or 422: the request was refused as it is; `message` says why (never with the value)."""


class QuotaExceededError(InvalidRequestError):
    """422: the project holds as many secrets as it may."""


class RateLimitedError(SecretsError):
    """429, still after the retries (or with a Retry-After longer than the client waits)."""

    def __init__(self, message: str, *, status: int | None = None, error: str | None = None) -> None:
        super().__init__(message, status=status, error=error)
        self.retry_after: float | None = None


class UnavailableError(SecretsError):
    """503, or no answer at all (connection refused or lost, timeout), still after the retries."""


class ServerError(SecretsError):
    """500 (or another unexpected status): a fault of the service; `error` may be secret_value_unreadable."""


_BY_STATUS: dict[int, type[SecretsError]] = {
    400: InvalidRequestError,
    401: UnauthorizedError,
    403: ForbiddenError,
    404: NotFoundError,
    409: ConflictError,
    410: GoneError,
    412: PreconditionFailedError,
    413: InvalidRequestError,
    422: InvalidRequestError,
    429: RateLimitedError,
    503: UnavailableError,
}


def error_for(
    status: int, body: Any, etag: str | None = None, retry_after: float | None = None
) -> SecretsError:
    """The typed error for an answer's status and JSON body."""
    error = message = None
    if isinstance(body, Mapping):
        error = body.get("error") if isinstance(body.get("error"), str) else None
        message = body.get("message") if isinstance(body.get("message"), str) else None
    kind = _BY_STATUS.get(status, ServerError)
    if kind is InvalidRequestError and status == 422 and (message or "").startswith(QUOTA_MESSAGE_PREFIX):
        kind = QuotaExceededError
    exc = kind(message or error or f"HTTP {status}", status=status, error=error)
    if isinstance(exc, PreconditionFailedError):
        exc.current_version = version_of(etag)
    if isinstance(exc, RateLimitedError):
        exc.retry_after = retry_after
    return exc


def version_of(etag: str | None) -> int | None:
    """The version an ETag names (`"3"` -> 3), or None."""
    if etag and len(etag) > 2 and etag[0] == etag[-1] == '"' and etag[1:-1].isdigit():
        return int(etag[1:-1])
    return None
