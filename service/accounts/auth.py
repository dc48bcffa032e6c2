"""API-key authentication: a presented key to the project it acts for, with a short-lived cache."""

from __future__ import annotations

import asyncio
import functools
import hmac
from dataclasses import dataclass

from service.accounts import sql
from service.accounts.model import Principal, parse_scopes
from service.clock import Clock
from service.crypto import API_KEY_PREFIX, hash_api_key
from service.db.store import Store
from service.errors import Unauthorized


def well_formed(token: str | None) -> str | None:
    """The token when it can be a project key at all (a cheap check before hashing)."""
    token = (token or "").strip()
    if not token.startswith(API_KEY_PREFIX) or len(token) > 128:
        return None
    return token


@dataclass(frozen=True, slots=True)
class _Cached:
    refresh_at: float
    expires_at: float
    principal: Principal


class Authenticator:
    """Maps a presented key to its project. Positive answers are cached for a short, configured time.

    Under load every request of a key would miss at once when its entry expires, and
    queue behind one another for the same row: one lookup per key is in flight at a
    time, and the last fifth of an entry's life is spent refreshing it, so a busy key
    is looked up by one request while the others still use the live entry.
    """

    def __init__(self, store: Store, hash_key: bytes, cache_seconds: float, clock: Clock) -> None:
        self._store = store
        self._hash_key = hash_key
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._cache: dict[str, _Cached] = {}
        self._lookups: dict[str, asyncio.Future[Principal | None]] = {}

    async def authenticate(self, token: str | None) -> Principal:
        token = well_formed(token)
        if token is None:
            raise Unauthorized()
        key_hash = hash_api_key(self._hash_key, token)
        cached = self._cache.get(key_hash)
        now = self._clock.monotonic()
        if (
            cached is not None
            and now < cached.expires_at
            and (now < cached.refresh_at or key_hash in self._lookups)
        ):
            return cached.principal
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
        rows = await self._store.fetch(sql.find_active_api_key(key_hash))
        if not rows or not hmac.compare_digest(rows[0][2], key_hash):
            self._cache.pop(key_hash, None)
            return None
        principal = Principal(project_id=rows[0][1], api_key_id=rows[0][0], scopes=parse_scopes(rows[0][3]))
        if self._cache_seconds > 0:
            if len(self._cache) > 10000:
                self._cache.clear()
            now = self._clock.monotonic()
            self._cache[key_hash] = _Cached(
                now + self._cache_seconds * 0.8, now + self._cache_seconds, principal
            )
        return principal
