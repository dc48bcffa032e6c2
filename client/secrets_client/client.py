"""The async client of the secrets service's HTTP API.

Every call has a timeout (per attempt, and for all attempts together) and is retried
on 429 and 503 (never sooner than Retry-After) and on connection failures, with capped
exponential backoff and jitter. A connection lost after the request went out is retried
only where a repeat cannot do harm: reads, creates (each create carries an
Idempotency-Key, so a repeat replays the first answer instead of making a second
secret) and updates without If-Match (a repeat writes the same value again).
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import httpx

from secrets_client.errors import (
    ConflictError,
    NotFoundError,
    SecretsError,
    ServerError,
    UnavailableError,
    error_for,
    version_of,
)
from secrets_client.models import Deleted, Secret, SecretValue, Version
from secrets_client.retry import RetryPolicy, parse_retry_after

logger = logging.getLogger("secrets_client")

__version__ = "0.1.0"

# The request never reached the service: always safe to send again.
_UNSENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
_RETRY_STATUSES = (429, 503)
_STORE_ROUNDS = 5


def if_match_header(if_match: int | str | None) -> dict[str, str]:
    """If-Match for a version number (3 -> "3"), or a header value as given ("*", '"3"')."""
    if if_match is None:
        return {}
    return {"If-Match": f'"{if_match}"' if isinstance(if_match, int) else if_match}


def _segment(text: str) -> str:
    return quote(text, safe="")


class SecretsClient:
    """`async with SecretsClient(base_url, api_key) as client:` then `await client.create(...)`, ...

    `timeout` bounds each attempt, `total_timeout` a call with all its retries; at most
    `max_connections` requests are in flight (others wait for a connection). The API key
    goes out as `Authorization: Bearer` and is never in a repr, log line or error.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 10.0,
        total_timeout: float = 60.0,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 16,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._retry = retry or RetryPolicy()
        self._total_timeout = total_timeout
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {api_key}", "User-Agent": f"secrets-client/{__version__}"},
            timeout=httpx.Timeout(timeout),
            # Shorter than the server's keep-alive (uvicorn: 5 s), so a request never races its close.
            # Few connections: httpcore checks every pooled connection on each request (measured: with 32,
            # a third of the sync agent's CPU went there).
            limits=httpx.Limits(
                max_connections=max_connections,
                max_keepalive_connections=max_connections,
                keepalive_expiry=2.0,
            ),
            transport=transport,
            follow_redirects=False,
        )

    def __repr__(self) -> str:
        return f"SecretsClient(base_url={self.base_url!r})"

    async def __aenter__(self) -> SecretsClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # --- the API -------------------------------------------------------------------------

    async def create(self, name: str, value: str, *, idempotency_key: str | None = None) -> Secret:
        """Create a secret (409 ConflictError if the name exists). Retries reuse one Idempotency-Key."""
        headers = {"Idempotency-Key": idempotency_key or f"secrets-client-{uuid.uuid4()}"}
        body = await self._call(
            "POST", "/api/secrets", json={"name": name, "value": value}, headers=headers, repeatable=True
        )
        return Secret.from_json(body)

    async def list(self) -> list[Secret]:
        """The project's secrets, by name."""
        return [Secret.from_json(item) for item in await self._call("GET", "/api/secrets")]

    async def get(self, secret_id: str) -> Secret:
        return Secret.from_json(await self._call("GET", f"/api/secrets/{_segment(secret_id)}"))

    async def update(self, secret_id: str, value: str, if_match: int | str | None = None) -> Secret:
        """A new version with this value; with `if_match` (a version, or "*") only if it is still current."""
        body = await self._call(
            "PUT",
            f"/api/secrets/{_segment(secret_id)}",
            json={"value": value},
            headers=if_match_header(if_match),
            repeatable=if_match is None,
        )
        return Secret.from_json(body)

    async def delete(self, secret_id: str, if_match: int | str | None = None) -> Deleted:
        response = await self._send(
            "DELETE", f"/api/secrets/{_segment(secret_id)}", headers=if_match_header(if_match)
        )
        body = self._json(response)
        return Deleted(id=body["id"], version=version_of(response.headers.get("etag")))

    async def versions(self, secret_id: str) -> builtins.list[Version]:
        """The kept versions, newest first (never a value)."""
        body = await self._call("GET", f"/api/secrets/{_segment(secret_id)}/versions")
        return [Version.from_json(item) for item in body]

    async def restore(self, secret_id: str, version: int, if_match: int | str | None = None) -> Secret:
        """A new version equal to a kept one."""
        body = await self._call(
            "POST",
            f"/api/secrets/{_segment(secret_id)}/versions/{int(version)}/restore",
            headers=if_match_header(if_match),
        )
        return Secret.from_json(body)

    async def read_value(
        self, *, name: str | None = None, id: str | None = None, version: int | None = None
    ) -> SecretValue:
        """A value (audited by the service): by `name` (the current version) or by `id` (and `version`)."""
        if (name is None) == (id is None):
            raise TypeError("read_value takes exactly one of name= and id=")
        if name is not None:
            if version is not None:
                raise TypeError("a version can only be read by id=")
            path = f"/api/secrets/by-name/{_segment(name)}/value"
            params = None
        else:
            assert id is not None
            path = f"/api/secrets/{_segment(id)}/value"
            params = None if version is None else {"version": str(int(version))}
        return SecretValue.from_json(await self._call("GET", path, params=params))

    async def store(self, name: str, value: str) -> Secret:
        """Create, or update the secret of that name: a race with another writer ends in an update."""
        for _ in range(_STORE_ROUNDS):
            try:
                return await self.create(name, value)
            except ConflictError:
                pass
            existing = next((s for s in await self.list() if s.name == name), None)
            if existing is None:
                continue  # deleted since the 409: create again
            try:
                return await self.update(existing.id, value)
            except NotFoundError:
                continue  # deleted since the list
        raise ConflictError(f"{name} was created and deleted by others {_STORE_ROUNDS} times in a row")

    # --- the transport -------------------------------------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        repeatable: bool | None = None,
    ) -> Any:
        response = await self._send(
            method, path, json=json, headers=headers, params=params, repeatable=repeatable
        )
        return self._json(response)

    @staticmethod
    def _json(response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            raise ServerError(
                f"the service answered {response.status_code} without a JSON body",
                status=response.status_code,
            ) from None

    async def _send(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        repeatable: bool | None = None,
    ) -> httpx.Response:
        """One call: its attempts, within the total timeout. Returns a 2xx answer or raises a SecretsError."""
        if repeatable is None:
            repeatable = method == "GET"
        try:
            async with asyncio.timeout(self._total_timeout):
                return await self._attempts(method, path, json, headers, params, repeatable)
        except TimeoutError:
            raise UnavailableError(
                f"{method} {path}: no answer within {self._total_timeout:g} s (with retries)"
            ) from None

    async def _attempts(
        self,
        method: str,
        path: str,
        json: Any,
        headers: Mapping[str, str] | None,
        params: Mapping[str, str] | None,
        repeatable: bool,
    ) -> httpx.Response:
        retry = 0
        while True:
            retry_after: float | None = None
            try:
                response = await self._http.request(method, path, json=json, headers=headers, params=params)
            except httpx.TransportError as exc:
                if not isinstance(exc, _UNSENT) and not repeatable:
                    raise UnavailableError(
                        f"{method} {path}: the connection failed after the request was sent "
                        f"({type(exc).__name__}); it may or may not have been applied"
                    ) from None
                failure: SecretsError = UnavailableError(f"{method} {path}: {type(exc).__name__}")
                reason = type(exc).__name__
            else:
                if response.is_success:
                    return response
                retry_after = parse_retry_after(response.headers.get("retry-after"))
                try:
                    body = response.json()
                except ValueError:
                    body = None
                failure = error_for(response.status_code, body, response.headers.get("etag"), retry_after)
                if response.status_code not in _RETRY_STATUSES:
                    raise failure
                reason = str(response.status_code)
            delay = self._retry.delay(retry, retry_after)
            if delay is None:
                raise failure
            retry += 1
            logger.info(
                "%s %s: %s, retry %d of %d in %.2f s",
                method,
                path,
                reason,
                retry,
                self._retry.attempts - 1,
                delay,
            )
            await asyncio.sleep(delay)
