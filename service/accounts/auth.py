"""API-key authentication: a presented key to the project it acts for, with a short-lived cache."""

from __future__ import annotations

import asyncio
import functools
import hmac
from dataclasses import dataclass

from service.accounts import sql
from service.accounts.model import Principal, parse_scopes
from service.clock import Clock
from service.crypto import API_KEY_PREFIX, ApiKeyHasher
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


# Keys looked up in one statement at most (a refresh of more takes several).
_REFRESH_BATCH = 500


class Authenticator:
    """Maps a presented key to its project. Positive answers are cached for a short, configured time.

    Under load every request of a key would miss at once when its entry expires, and
    queue behind one another for the same row: one lookup per key is in flight at a
    time, and the last fifth of an entry's life is spent refreshing it, so a busy key
    is looked up by one request while the others still use the live entry. A refresh
    takes every cached key due within the next fifth with it, in one statement: many
    clients' keys cost a lookup a cache period together, not one each.
    """

    def __init__(self, store: Store, hash_key: bytes, cache_seconds: float, clock: Clock) -> None:
        self._store = store
        self._hash = ApiKeyHasher(hash_key)
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._cache: dict[str, _Cached] = {}
        self._lookups: dict[str, asyncio.Future[Principal | None]] = {}
        self._refresh: asyncio.Future[None] | None = None

    async def authenticate(self, token: str | None) -> Principal:
        token = well_formed(token)
        if token is None:
            raise Unauthorized()
        key_hash = self._hash(token)
        cached = self._cache.get(key_hash)
        now = self._clock.monotonic()
        if cached is not None and now < cached.expires_at:
            if now < cached.refresh_at or self._refresh is not None:
                return cached.principal
            refresh = self._refresh = asyncio.ensure_future(self._refresh_due(now))
            refresh.add_done_callback(self._refreshed)
            try:
                # Shielded: this caller going away must not cancel the refresh of every due key.
                await asyncio.shield(refresh)
            except Exception:
                return cached.principal  # the database did not answer: the entry is still valid
            if key_hash not in self._cache:
                raise Unauthorized()
            return self._cache[key_hash].principal
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

    def _refreshed(self, refresh: asyncio.Future[None]) -> None:
        self._refresh = None
        if not refresh.cancelled():
            refresh.exception()  # retrieved here too, in case its caller has gone

    async def _refresh_due(self, now: float) -> None:
        """Look up again every cached key due for a refresh within the next fifth of its life."""
        horizon = now + self._cache_seconds * 0.2
        due = [key_hash for key_hash, cached in self._cache.items() if cached.refresh_at <= horizon]
        for start in range(0, len(due), _REFRESH_BATCH):
            await self._lookup_many(due[start : start + _REFRESH_BATCH])

    async def _lookup(self, key_hash: str) -> Principal | None:
        return (await self._lookup_many([key_hash])).get(key_hash)

    async def _lookup_many(self, key_hashes: list[str]) -> dict[str, Principal]:
        """The principals of the unrevoked keys among `key_hashes`, cached; the others leave the cache."""
        rows = await self._store.fetch(sql.find_active_api_keys(key_hashes))
        by_hash = {str(row[2]): row for row in rows}
        found: dict[str, Principal] = {}
        now = self._clock.monotonic()
        for key_hash in key_hashes:
            row = by_hash.get(key_hash)
            if row is None or not hmac.compare_digest(row[2], key_hash):
                self._cache.pop(key_hash, None)
                continue
            principal = found[key_hash] = Principal(
                project_id=row[1], api_key_id=row[0], scopes=parse_scopes(row[3])
            )
            if self._cache_seconds > 0:
                if len(self._cache) > 10000:
                    self._cache.clear()
                self._cache[key_hash] = _Cached(
                    now + self._cache_seconds * 0.8, now + self._cache_seconds, principal
                )
        return found
