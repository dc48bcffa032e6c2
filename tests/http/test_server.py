"""`serve` against hostile connections: bounded heads, deadlines, a concurrency cap, and a drain
that readiness probes see first. Real processes, raw sockets."""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from tests.support.app import make_env
from tests.support.service import Service

pytestmark = pytest.mark.slow

ServiceFactory = Callable[..., Service]


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[ServiceFactory]:
    """Start `serve` processes with settings of the test's choice; all are killed at teardown."""
    started: list[Service] = []

    async def start(**overrides: str) -> Service:
        workdir = tmp_path / f"service-{len(started)}"
        workdir.mkdir()
        service = Service(make_env(f"sqlite:///{workdir}/secrets.db", **overrides), workdir)
        started.append(service)
        await service.start_healthy()
        return service

    try:
        yield start  # type: ignore[misc]
    finally:
        for service in started:
            service.kill()


def connect(service: Service) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", service.port), timeout=10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return sock


def closed_within(sock: socket.socket, seconds: float) -> bytes | None:
    """What the server sent before closing the connection, or None if it stayed open `seconds`."""
    sock.settimeout(seconds)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return received


async def test_oversized_heads_are_refused_and_held_memory_stays_flat(serve: ServiceFactory) -> None:
    service = await serve()
    before = service.rss_peak_kib()
    held = []
    for _ in range(20):
        sock = connect(service)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Filler: ")
        # 4 MiB of one header line each: 80 MiB in all if the server kept it.
        chunk = b"a" * 65536
        try:
            for _ in range(64):
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        held.append(sock)
    answers = [await asyncio.to_thread(closed_within, sock, 10) for sock in held]
    for sock in held:
        sock.close()

    assert all(answer is not None for answer in answers), "a connection with an oversized head stayed open"
    assert any(answer and answer.startswith(b"HTTP/1.1 431") for answer in answers)
    assert service.rss_peak_kib() - before < 16 * 1024, "the server's memory grew with the heads it was sent"
    async with httpx.AsyncClient(base_url=service.url, timeout=10) as http:
        assert (await http.get("/healthz")).status_code == 200


async def test_idle_and_slow_connections_are_closed_by_their_deadlines(serve: ServiceFactory) -> None:
    service = await serve(HTTP_HEAD_TIMEOUT_SECONDS="1", HTTP_BODY_TIMEOUT_SECONDS="1")
    idle = [connect(service) for _ in range(10)]
    slow_head = [connect(service) for _ in range(5)]
    for sock in slow_head:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
    slow_body = [connect(service) for _ in range(5)]
    for sock in slow_body:
        sock.sendall(
            b"POST /api/secrets HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n0123456789"
        )
    started = time.monotonic()

    answers = await asyncio.gather(
        *(asyncio.to_thread(closed_within, sock, 8) for sock in idle + slow_head + slow_body)
    )

    assert all(answer is not None for answer in answers), "a connection outlived its deadline"
    assert time.monotonic() - started < 8
    assert all(answer == b"" for answer in answers[:10]), "an idle connection is closed, not answered"
    assert all(answer.startswith(b"HTTP/1.1 408") for answer in answers[10:15] if answer)
    for sock in idle + slow_head + slow_body:
        sock.close()


async def test_requests_past_the_concurrency_cap_are_answered_503(serve: ServiceFactory) -> None:
    service = await serve(HTTP_MAX_CONCURRENCY="4", HTTP_HEAD_TIMEOUT_SECONDS="30")
    holders = [connect(service) for _ in range(4)]
    for sock in holders:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    await asyncio.sleep(0.3)
    async with httpx.AsyncClient(base_url=service.url, timeout=10) as http:
        over = await http.get("/healthz")
        assert over.status_code == 503
        for sock in holders:
            sock.close()
        await asyncio.sleep(0.3)
        assert (await http.get("/healthz")).status_code == 200


async def test_sigterm_turns_readyz_503_before_the_listener_closes(serve: ServiceFactory) -> None:
    service = await serve(SHUTDOWN_DRAIN_SECONDS="2")
    async with httpx.AsyncClient(base_url=service.url, timeout=10) as http:
        assert (await http.get("/readyz")).json() == {"status": "ready"}
        service.send(signal.SIGTERM)
        await asyncio.sleep(0.3)
        draining = await http.get("/readyz")
        assert draining.status_code == 503
        assert draining.json()["message"] == "The service is shutting down"
        assert (await http.get("/healthz")).status_code == 200, "still alive, still serving meanwhile"
    assert await service.wait_exit(20) == 0
