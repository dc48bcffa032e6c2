"""Project API keys: who is calling, and which project they may act on."""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass

from starlette.datastructures import Headers

from service import repository
from service.crypto import API_KEY_PREFIX, hash_api_key
from service.errors import Unauthorized


@dataclass(frozen=True, slots=True)
class Principal:
    project_id: str
    api_key_id: str


def presented_key(headers: Headers) -> str | None:
    """The key from X-Auth-Token, or from Authorization: Bearer, as LangWatch accepts both."""
    token = headers.get("x-auth-token")
    if not token:
        scheme, _, credentials = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            token = credentials
    token = (token or "").strip()
    if not token.startswith(API_KEY_PREFIX) or len(token) > 128:
        return None
    return token


class Authenticator:
    """Maps a presented key to its project. Positive answers are cached for a short, configured time."""

    def __init__(self, store: object, hash_key: bytes, cache_seconds: float) -> None:
        self._store = store
        self._hash_key = hash_key
        self._cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, Principal]] = {}

    async def authenticate(self, headers: Headers) -> Principal:
        token = presented_key(headers)
        if token is None:
            raise Unauthorized()
        key_hash = hash_api_key(self._hash_key, token)
        cached = self._cache.get(key_hash)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            return cached[1]
        row = await self._store.read(lambda conn: repository.find_active_api_key(conn, key_hash))  # type: ignore[attr-defined]
        if row is None or not hmac.compare_digest(row["key_hash"], key_hash):
            self._cache.pop(key_hash, None)
            raise Unauthorized()
        principal = Principal(project_id=row["project_id"], api_key_id=row["id"])
        if self._cache_seconds > 0:
            if len(self._cache) > 10000:
                self._cache.clear()
            self._cache[key_hash] = (now + self._cache_seconds, principal)
        return principal
