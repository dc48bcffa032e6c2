"""API-key lookups under load: one lookup per key at a time, and a cached key refreshed without a stall.

The store is a stand-in that counts lookups and holds them until released; the
same paths against real databases are covered by the API tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from service.accounts.auth import Authenticator
from service.accounts.model import Principal
from service.crypto import hash_api_key
from service.db.plan import Fetch
from service.errors import ServiceUnavailable, Unauthorized
from tests.support.clock import FakeClock

HASH_KEY = b"k" * 32
TOKEN = "sk-lw-" + "a" * 48
KEY_HASH = hash_api_key(HASH_KEY, TOKEN)


class HeldStore:
    """Answers key lookups from `rows`, each held until `release` is set."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str]] = [
            ("key-1", "project-1", KEY_HASH, "secrets:manage secrets:read secrets:view")
        ]
        self.lookups = 0
        self.release = asyncio.Event()
        self.fail: Exception | None = None

    async def fetch(self, statement: Fetch) -> Sequence[Sequence[Any]]:
        assert "api_keys" in statement.sql
        self.lookups += 1
        await self.release.wait()
        if self.fail is not None:
            raise self.fail
        return [row for row in self.rows if row[2] in statement.params]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


async def test_concurrent_requests_with_a_cold_cache_share_one_lookup(clock: FakeClock) -> None:
    store = HeldStore()
    authenticator = Authenticator(store, HASH_KEY, cache_seconds=1.0, clock=clock)
    waiting = [asyncio.create_task(authenticator.authenticate(TOKEN)) for _ in range(64)]
    await asyncio.sleep(0.01)
    store.release.set()
    principals = await asyncio.gather(*waiting)
    assert store.lookups == 1
    assert set(principals) == {Principal(project_id="project-1", api_key_id="key-1")}


async def test_a_cached_key_is_refreshed_by_one_request_while_the_others_go_on(clock: FakeClock) -> None:
    store = HeldStore()
    store.release.set()
    authenticator = Authenticator(store, HASH_KEY, cache_seconds=1.0, clock=clock)
    await authenticator.authenticate(TOKEN)
    store.release.clear()

    clock.seconds += 0.9  # inside the entry's last fifth: due for a refresh, still valid
    refreshing = asyncio.create_task(authenticator.authenticate(TOKEN))
    await asyncio.sleep(0.01)
    assert not refreshing.done(), "the first request after the refresh point looks the key up"
    others = await asyncio.wait_for(
        asyncio.gather(*(authenticator.authenticate(TOKEN) for _ in range(10))), 1
    )
    assert len(others) == 10, "the others are answered from the live entry, not held"
    store.release.set()
    await refreshing
    assert store.lookups == 2

    clock.seconds += 0.5  # past the old entry's expiry, before the refreshed one is due
    await asyncio.wait_for(authenticator.authenticate(TOKEN), 1)
    assert store.lookups == 2


async def test_a_revoked_key_is_refused_once_its_entry_expires(clock: FakeClock) -> None:
    store = HeldStore()
    store.release.set()
    authenticator = Authenticator(store, HASH_KEY, cache_seconds=1.0, clock=clock)
    await authenticator.authenticate(TOKEN)
    store.rows = []
    clock.seconds += 1.0
    with pytest.raises(Unauthorized):
        await authenticator.authenticate(TOKEN)
    with pytest.raises(Unauthorized):
        await authenticator.authenticate(TOKEN)
    assert store.lookups == 3, "refusals are not cached: a key issued later works at once"


async def test_a_failed_lookup_fails_its_waiters_and_the_next_request_tries_again(clock: FakeClock) -> None:
    store = HeldStore()
    store.fail = ServiceUnavailable("The database is unavailable; retry shortly")
    authenticator = Authenticator(store, HASH_KEY, cache_seconds=1.0, clock=clock)
    waiting = [asyncio.create_task(authenticator.authenticate(TOKEN)) for _ in range(5)]
    await asyncio.sleep(0.01)
    store.release.set()
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(isinstance(result, ServiceUnavailable) for result in results)
    assert store.lookups == 1
    store.fail = None
    assert await authenticator.authenticate(TOKEN) == Principal(project_id="project-1", api_key_id="key-1")
    assert store.lookups == 2


async def test_a_caller_that_goes_away_does_not_cancel_the_shared_lookup(clock: FakeClock) -> None:
    store = HeldStore()
    authenticator = Authenticator(store, HASH_KEY, cache_seconds=1.0, clock=clock)
    leaving = asyncio.create_task(authenticator.authenticate(TOKEN))
    staying = asyncio.create_task(authenticator.authenticate(TOKEN))
    await asyncio.sleep(0.01)
    leaving.cancel()
    store.release.set()
    assert (await staying).project_id == "project-1"
    assert store.lookups == 1


async def test_one_refresh_looks_up_every_key_due_and_drops_the_revoked(clock: FakeClock) -> None:
    store = HeldStore()
    tokens = [f"sk-lw-{i:048d}" for i in range(300)]
    store.rows = [
        (f"key-{i}", "project-1", hash_api_key(HASH_KEY, token), "secrets:view")
        for i, token in enumerate(tokens)
    ]
    store.release.set()
    authenticator = Authenticator(store, HASH_KEY, cache_seconds=1.0, clock=clock)
    for token in tokens:
        await authenticator.authenticate(token)
    assert store.lookups == 300, "a key never seen is looked up alone"
    store.rows.pop()  # the last key is revoked

    clock.seconds += 0.85  # every entry inside its last fifth
    await authenticator.authenticate(tokens[0])
    assert store.lookups == 301, "one statement refreshed all 300"
    clock.seconds += 0.5  # past the old entries' expiry: the refreshed ones answer, the revoked one does not
    principals = [await authenticator.authenticate(token) for token in tokens[:-1]]
    assert [p.api_key_id for p in principals] == [f"key-{i}" for i in range(299)]
    assert store.lookups == 301
    with pytest.raises(Unauthorized):
        await authenticator.authenticate(tokens[-1])


async def test_a_refresh_the_database_fails_leaves_live_entries_answering(clock: FakeClock) -> None:
    store = HeldStore()
    store.release.set()
    authenticator = Authenticator(store, HASH_KEY, cache_seconds=1.0, clock=clock)
    await authenticator.authenticate(TOKEN)
    store.fail = ServiceUnavailable("The database is unavailable; retry shortly")

    clock.seconds += 0.9
    assert (await authenticator.authenticate(TOKEN)).api_key_id == "key-1"
    assert store.lookups == 2
    clock.seconds += 0.2  # expired, and the database still down: the caller hears of it
    with pytest.raises(ServiceUnavailable):
        await authenticator.authenticate(TOKEN)
