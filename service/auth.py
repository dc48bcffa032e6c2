"""Project API keys: who is calling, and which project they may act on."""

from __future__ import annotations

import asyncio
import functools
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
    """Maps a presented key to its project. Positive answers are cached for a short, configured time.

    Under load every request of a key would miss at once when its entry expires, and
    queue behind one another for the same row: one lookup per key is in flight at a
    time, and the last fifth of an entry's life is spent refreshing it, so a busy key
    is looked up by one request while the others still use the live entry.
    """

    def __init__(self, store: object, hash_key: bytes, cache_seconds: float) -> None:
        self._store = store
        self._hash_key = hash_key
        self._cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, float, Principal]] = {}  # hash -> (refresh at, expires at, who)
        self._lookups: dict[str, asyncio.Future[Principal | None]] = {}

    async def authenticate(self, headers: Headers) -> Principal:
        token = presented_key(headers)
        if token is None:
            raise Unauthorized()
        key_hash = hash_api_key(self._hash_key, token)
        cached = self._cache.get(key_hash)
        now = time.monotonic()
        if cached is not None and now < cached[1] and (now < cached[0] or key_hash in self._lookups):
            return cached[2]
        lookup = self._lookups.get(key_hash)
        if lookup is None:
            lookup = self._lookups[key_hash] = asyncio.ensure_future(self._lookup(key_hash))
            lookup.add_done_callback(functools.partial(self._looked_up, key_hash))
        # Shielded: one caller going away must not cancel the lookup the others wait on.
        principal = await asyncio.shield(lookup)
        if principal is None:
            raise Unauthorized()
        return principal

    def _looked_up(self, key_hash: str, lookup: asyncio.Future[Principal | None]) -> None:
        del self._lookups[key_hash]
        if not lookup.cancelled():
            lookup.exception()  # retrieved here too, in case every waiter has gone

    async def _lookup(self, key_hash: str) -> Principal | None:
        row = await self._store.fetch(repository.find_active_api_key(key_hash))  # type: ignore[attr-defined]
        if not row or not hmac.compare_digest(row[0][2], key_hash):
            self._cache.pop(key_hash, None)
            return None
        principal = Principal(project_id=row[0][1], api_key_id=row[0][0])
        if self._cache_seconds > 0:
            if len(self._cache) > 10000:
                self._cache.clear()
            now = time.monotonic()
            self._cache[key_hash] = (now + self._cache_seconds * 0.8, now + self._cache_seconds, principal)
        return principal
