"""Retries: 429 and 503 honour Retry-After, connection failures are retried where a repeat is harmless,
and a create whose response is lost on the way back makes one secret (a real serve process, both backends)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import httpx
import pytest
from secrets_client import (
    RateLimitedError,
    RetryPolicy,
    SecretsClient,
    SyncSecretsClient,
    UnavailableError,
)
from secrets_client.retry import parse_retry_after

from service.settings import Settings
from tests.client.conftest import FAST_RETRIES
from tests.support.app import make_env, make_project
from tests.support.leaks import CANARY, leaked
from tests.support.process import service_process

CREATED = {
    "id": "s1",
    "projectId": "p",
    "name": "N",
    "createdAt": "2030-01-01T00:00:00.000Z",
    "updatedAt": "2030-01-01T00:00:00.000Z",
    "version": 1,
}


def scripted(*answers: httpx.Response | type[Exception]) -> tuple[httpx.MockTransport, list[float]]:
    """A transport answering each request with the next scripted answer (or raising it); notes when each came."""
    calls: list[float] = []
    pending = list(answers)

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(time.monotonic())
        answer = pending.pop(0)
        if isinstance(answer, httpx.Response):
            return answer
        raise answer("scripted failure", request=request)

    return httpx.MockTransport(handle), calls


@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_in_seconds_is_honoured(status: int) -> None:
    transport, calls = scripted(
        httpx.Response(status, json={"error": "busy"}, headers={"Retry-After": "1"}),
        httpx.Response(201, json=CREATED),
    )
    async with SecretsClient("http://x", "k", transport=transport, retry=FAST_RETRIES) as api:
        created = await api.create("N", "v")
    assert created.id == "s1"
    assert len(calls) == 2
    assert calls[1] - calls[0] >= 1.0, "retried sooner than Retry-After said"


async def test_retry_after_as_an_http_date_is_honoured() -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=2), usegmt=True)
    transport, calls = scripted(
        httpx.Response(429, json={"error": "Too Many Requests"}, headers={"Retry-After": when}),
        httpx.Response(200, json=[]),
    )
    async with SecretsClient("http://x", "k", transport=transport, retry=FAST_RETRIES) as api:
        assert await api.list() == []
    # An HTTP-date has whole seconds: at least one second, at most two, of waiting.
    assert calls[1] - calls[0] >= 1.0


async def test_a_retry_after_longer_than_the_client_waits_is_raised_at_once() -> None:
    transport, calls = scripted(
        httpx.Response(429, json={"error": "Too Many Requests"}, headers={"Retry-After": "120"})
    )
    policy = RetryPolicy(attempts=5, max_retry_after=10)
    async with SecretsClient("http://x", "k", transport=transport, retry=policy) as api:
        started = time.monotonic()
        with pytest.raises(RateLimitedError) as limited:
            await api.list()
    assert limited.value.retry_after == 120 and limited.value.status == 429
    assert len(calls) == 1 and time.monotonic() - started < 1


async def test_503s_are_retried_with_backoff_until_the_attempts_run_out() -> None:
    transport, calls = scripted(*[httpx.Response(503, json={"error": "Service Unavailable"})] * 4)
    async with SecretsClient("http://x", "k", transport=transport, retry=FAST_RETRIES) as api:
        with pytest.raises(UnavailableError) as unavailable:
            await api.list()
    assert unavailable.value.status == 503
    assert len(calls) == FAST_RETRIES.attempts


async def test_a_lost_connection_is_retried_for_reads_and_creates_not_for_deletes() -> None:
    transport, calls = scripted(httpx.ReadError, httpx.Response(200, json=[]))
    async with SecretsClient("http://x", "k", transport=transport, retry=FAST_RETRIES) as api:
        assert await api.list() == []
    assert len(calls) == 2

    transport, calls = scripted(httpx.RemoteProtocolError, httpx.Response(201, json=CREATED))
    async with SecretsClient("http://x", "k", transport=transport, retry=FAST_RETRIES) as api:
        assert (await api.create("N", "v")).id == "s1"
    assert len(calls) == 2

    transport, calls = scripted(httpx.ReadError, httpx.Response(200, json={"id": "s1", "deleted": True}))
    async with SecretsClient("http://x", "k", transport=transport, retry=FAST_RETRIES) as api:
        with pytest.raises(UnavailableError) as unknown:
            await api.delete("s1")
    assert "may or may not have been applied" in unknown.value.message
    assert len(calls) == 1, "a delete whose answer was lost was sent again"

    # A connection that never opened carried nothing: any call may be sent again.
    transport, calls = scripted(httpx.ConnectError, httpx.Response(200, json={"id": "s1", "deleted": True}))
    async with SecretsClient("http://x", "k", transport=transport, retry=FAST_RETRIES) as api:
        assert (await api.delete("s1")).id == "s1"
    assert len(calls) == 2


async def test_every_call_has_a_total_timeout() -> None:
    async def hang(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(60)
        raise AssertionError("unreachable")

    async with SecretsClient("http://x", "k", transport=httpx.MockTransport(hang), total_timeout=0.5) as api:
        started = time.monotonic()
        with pytest.raises(UnavailableError):
            await api.list()
    assert time.monotonic() - started < 5


def test_parse_retry_after() -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    assert parse_retry_after("7", now) == 7
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now) == 30
    assert parse_retry_after(format_datetime(now - timedelta(seconds=30), usegmt=True), now) == 0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None


def test_backoff_is_capped_and_jittered() -> None:
    policy = RetryPolicy(attempts=20, base_delay=0.1, max_delay=2.0)
    delays = [policy.delay(retry, None) for retry in range(19) for _ in range(20)]
    assert all(d is not None and 0 <= d <= 2.0 for d in delays)
    assert len({round(d or 0, 6) for d in delays}) > 100, "no jitter"
    assert policy.delay(19, None) is None, "retried past the last attempt"
    assert (policy.delay(0, 3.0) or 0) >= 3.0


class DroppingProxy:
    """A TCP proxy to the service that, when armed, lets a request through and then cuts the connection as
    its response starts to come back: the service has done the work, the client never hears of it."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.armed = 0
        self.dropped = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> DroppingProxy:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.wait_for(self._server.wait_closed(), 10)

    async def _connection(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)

        async def pipe(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter, on_data: Callable[[], bool] | None
        ) -> None:
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                while data := await reader.read(65536):
                    if on_data is not None and on_data():
                        client_writer.transport.abort()
                        upstream_writer.transport.abort()
                        return
                    writer.write(data)
                    await writer.drain()
            writer.close()

        def drop_this_response() -> bool:
            if self.armed:
                self.armed -= 1
                self.dropped += 1
                return True
            return False

        tasks = [
            asyncio.create_task(pipe(client_reader, upstream_writer, None)),
            asyncio.create_task(pipe(upstream_reader, client_writer, drop_this_response)),
        ]
        self._tasks.update(tasks)
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.difference_update(tasks)


@pytest.fixture
async def served(database_url: str, tmp_path: Path) -> AsyncIterator[tuple[str, dict[str, str]]]:
    """A real `secrets-service serve` on the test's backend, and a project's key."""
    env = make_env(database_url)
    project = await make_project(Settings.from_env(env), "retries")
    async with service_process(env, tmp_path) as service:
        yield service.url, project


@pytest.mark.slow
async def test_a_create_whose_response_is_lost_makes_one_secret(
    served: tuple[str, dict[str, str]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # httpx and httpcore at their most talkative, over a real socket
    url, project = served
    upstream_port = int(url.rsplit(":", 1)[1])
    async with (
        DroppingProxy(upstream_port) as proxy,
        SecretsClient(f"http://127.0.0.1:{proxy.port}", project["apiKey"], retry=FAST_RETRIES) as api,
    ):
        proxy.armed = 1
        created = await api.create("ONCE", CANARY)
        assert proxy.dropped == 1, "the proxy did not cut the first response"
        listed = await api.list()
    assert [(s.id, s.name) for s in listed] == [(created.id, "ONCE")], (
        "the retried create made a second secret"
    )
    assert any("retry" in r.getMessage() for r in caplog.records)
    assert not leaked(CANARY, caplog.text) and not leaked(project["apiKey"], caplog.text)

    # Without the client's Idempotency-Key, the same lost response and retry make two: the test can tell.
    async with DroppingProxy(upstream_port) as proxy, httpx.AsyncClient(timeout=10) as http:
        proxy.armed = 1
        body = {"name": "TWICE", "value": "v"}
        headers = {"X-Auth-Token": project["apiKey"]}
        with pytest.raises(httpx.TransportError):
            await http.post(f"http://127.0.0.1:{proxy.port}/api/secrets", json=body, headers=headers)
        again = await http.post(f"http://127.0.0.1:{proxy.port}/api/secrets", json=body, headers=headers)
        assert again.status_code == 409, "the naive retry did not collide with the first create"


@pytest.mark.slow
def test_the_sync_wrapper_against_a_real_service(served: tuple[str, dict[str, str]]) -> None:
    url, project = served
    with SyncSecretsClient(url, project["apiKey"]) as api:
        secret = api.store("SYNC", "one")
        assert api.store("SYNC", "two").version == 2
        assert api.read_value(name="SYNC").reveal() == "two"
        assert [v.version for v in api.versions(secret.id)] == [2, 1]
        assert api.get(secret.id).version == 2
        assert [s.name for s in api.list()] == ["SYNC"]
        assert api.delete(secret.id).id == secret.id
        assert "SyncSecretsClient" in repr(api) and project["apiKey"] not in repr(api)
