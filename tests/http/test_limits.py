"""Rate limits per API key: a bucket for requests, one of their own for value reads; 429 writes nothing."""

from __future__ import annotations

import pytest

from service.errors import RateLimited
from service.http.limits import Limit, RateLimiter
from service.settings import Settings
from tests.support.app import auth, created, issue_key, make_env, make_project, serving
from tests.support.clock import FakeClock
from tests.support.database import events_for, query


def test_a_bucket_refills_at_its_rate_and_says_when_to_come_back() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock, {"requests": Limit(per_second=2, burst=3), "reads": Limit(0, 1)})
    for _ in range(3):
        limiter.take("key-a", "requests")
    with pytest.raises(RateLimited) as refused:
        limiter.take("key-a", "requests")
    assert refused.value.headers == {"Retry-After": "1"}
    limiter.take("key-b", "requests")  # another key has its own bucket
    clock.advance(0.5)
    limiter.take("key-a", "requests")  # half a second at 2/s is one token
    with pytest.raises(RateLimited):
        limiter.take("key-a", "requests")
    for _ in range(100):
        limiter.take("key-a", "reads")  # 0 per second: no limit


async def test_over_the_limit_is_a_429_with_retry_after_and_nothing_is_written(database_url: str) -> None:
    settings = Settings.from_env(
        make_env(
            database_url,
            RATE_LIMIT_PER_SECOND="1",
            RATE_LIMIT_BURST="3",
            RATE_LIMIT_READS_PER_SECOND="1",
            RATE_LIMIT_READS_BURST="2",
        )
    )
    project = await make_project(settings, "limited")
    other = await issue_key(settings, project["projectId"], "secrets:manage")
    clock = FakeClock()
    async with serving(settings, clock=clock) as client:
        secret = await created(client, project, "FIRST", "v")
        assert (await client.get("/api/secrets", headers=auth(project))).status_code == 200
        assert (await client.get(f"/api/secrets/{secret['id']}", headers=auth(project))).status_code == 200

        refused = await client.post(
            "/api/secrets", json={"name": "OVER", "value": "v"}, headers=auth(project)
        )

        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1"
        assert refused.json() == {
            "error": "Too Many Requests",
            "message": "This API key is over its limit of 1 requests per second; retry in 1s",
        }
        assert (await query(settings, "SELECT COUNT(*) FROM secrets WHERE name = 'OVER'"))[0][0] == 0
        # Another key of the project is not held back; value reads have a bucket of their own.
        assert (await client.get("/api/secrets", headers=auth(other))).status_code == 200
        reads = [
            await client.get("/api/secrets/by-name/FIRST/value", headers=auth(project)) for _ in range(3)
        ]
        assert [r.status_code for r in reads] == [200, 200, 429]
        assert await events_for(settings, secret["id"]) == [
            "secret.created",
            "secret.accessed",
            "secret.accessed",
        ]

        clock.advance(1.0)
        again = await client.post("/api/secrets", json={"name": "LATER", "value": "v"}, headers=auth(project))
        assert again.status_code == 201
