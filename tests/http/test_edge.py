"""What every request meets first: no redirects built from the Host header, quiet client disconnects."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest

from service.app import create_app
from service.settings import Settings
from tests.support.app import auth
from tests.support.leaks import CANARY


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE"])
@pytest.mark.parametrize("path", ["/api/secrets/", "/healthz/", "/api/secrets/by-name/A/value/"])
async def test_a_trailing_slash_is_a_404_never_a_redirect_to_the_host_header(
    client: httpx.AsyncClient, project: dict[str, str], method: str, path: str
) -> None:
    response = await client.request(
        method,
        path,
        json={"name": "A", "value": CANARY},
        headers={**auth(project), "Host": "evil.example"},
        follow_redirects=True,
    )
    assert response.status_code in (404, 405)
    assert "location" not in response.headers
    assert set(response.json()) == {"error", "message"}
    assert response.history == [], "no redirect was followed"


async def test_a_client_that_disconnects_mid_body_is_logged_as_info_without_a_stack(
    settings: Settings, project: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    from asgi_lifespan import LifespanManager

    caplog.set_level(logging.DEBUG)
    messages = [
        {"type": "http.request", "body": b'{"name": "HALF", "value": "', "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async with LifespanManager(create_app(settings)) as manager:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/api/secrets",
            "raw_path": b"/api/secrets",
            "query_string": b"",
            "root_path": "",
            "headers": [
                (b"host", b"test"),
                (b"x-auth-token", project["apiKey"].encode()),
                (b"content-type", b"application/json"),
                (b"content-length", b"100"),
            ],
            "client": ("127.0.0.1", 1),
            "server": ("test", 80),
        }
        await manager.app(scope, receive, send)

    assert sent == [], "nobody is listening: nothing is sent"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], [
        r.getMessage() for r in caplog.records
    ]
    disconnects = [r for r in caplog.records if "client disconnected" in r.getMessage()]
    assert len(disconnects) == 1 and disconnects[0].levelno == logging.INFO
    assert disconnects[0].exc_info is None and "Traceback" not in caplog.text
