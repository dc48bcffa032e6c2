"""LOG_FORMAT=json: one JSON object per line, with the request's id, project and key id where known."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import pytest

from service.settings import Settings
from tests.support.app import make_env, make_project
from tests.support.service import Service
from tests.support.waiting import poll_until

pytestmark = pytest.mark.slow


async def test_json_lines_carry_the_request_context_and_never_the_key(tmp_path: Path) -> None:
    env = make_env(f"sqlite:///{tmp_path}/secrets.db", LOG_FORMAT="json")
    project = await make_project(Settings.from_env(env), "p")
    service = Service(env, tmp_path)
    await service.start_healthy()
    try:
        # A create whose client goes away mid-body: the service logs it, knowing who it was.
        sock = socket.create_connection(("127.0.0.1", service.port), timeout=10)
        sock.sendall(
            b"POST /api/secrets HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"X-Auth-Token: {project['apiKey']}\r\nX-Request-ID: req-json-1\r\n".encode()
            + b'Content-Length: 100\r\n\r\n{"name": '
        )
        await asyncio.sleep(0.3)
        sock.close()
        await poll_until(lambda: b"client disconnected" in service.log_text(), 10, what="the disconnect line")
        await service.stop()
    finally:
        service.kill()

    lines = [json.loads(line) for line in service.log_text().decode().splitlines() if line.strip()]
    assert lines and all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    (disconnect,) = [line for line in lines if "client disconnected" in line["message"]]
    assert disconnect["level"] == "INFO"
    assert disconnect["request_id"] == "req-json-1"
    assert disconnect["project_id"] == project["projectId"]
    assert disconnect["api_key_id"] == project["apiKeyId"]
    assert project["apiKey"] not in service.log_text().decode()
