"""Hostile bodies on every endpoint that takes one (POST and PUT): each is refused with a clear 4xx,
and nothing stored changes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from service.settings import Settings
from tests.support.app import auth, create, created, listed
from tests.support.database import stored_value


async def still_serving(client: httpx.AsyncClient, project: dict[str, str]) -> None:
    assert (await client.get("/healthz")).status_code == 200
    assert (await client.get("/api/secrets", headers=auth(project))).status_code == 200


NOT_A_JSON_OBJECT = [
    (b"{", "truncated"),
    (b"not json", "text"),
    (b"[]", "array"),
    (b'[{"name": "A", "value": "v"}]', "array-of-object"),
    (b'"a string"', "string"),
    (b"42", "number"),
    (b"true", "boolean"),
    (b"null", "null"),
    (b"", "empty"),
    (b"   ", "whitespace"),
    (b'{"name": "A", "value": "v"} {}', "two-documents"),
    (b'{"name": "A", "value": "v", "value": "w"}', "duplicate-key"),
    (b'{"name": "A", "value": "v", "n": ' + b"9" * 5000 + b"}", "huge-integer"),
    (b'{"name": "A", "value": "v", "n": 1e999}', "float-overflow"),
    (b'{"name": "A", "value": "v", "n": -1e999}', "negative-float-overflow"),
    (b'{"name": "A", "value": "v", "n": NaN}', "nan"),
    (b'{"name": "A", "value": "v", "n": Infinity}', "infinity"),
    (b'{"name": "A", "value": "v", "n": ' + b"[" * 30000 + b"]" * 30000 + b"}", "deep-arrays"),
    (b'{"a":' * 10000 + b"1" + b"}" * 10000, "deep-objects"),
    (b'{"name": "A", "value": "\xff"}', "invalid-utf8"),
    (b'{"name": "A", "value": "\xc0\xaf"}', "overlong-utf8"),
    (b'{"name": "A", "value": "\xed\xa0\x80"}', "encoded-surrogate"),
    (b"\xef\xbb\xbf" + b'{"name": "A", "value": "v"}', "utf8-bom"),
    ('{"name": "A", "value": "v"}'.encode("utf-16"), "utf16"),
    (b'{"name": "A", "value": "a\x00b"}', "raw-nul-in-string"),
    (b'{"name": "A", "value": "v"}\x00', "raw-nul-after"),
    (b'{"name": "A",\x00 "value": "v"}', "raw-nul-between"),
    (b"{'name': 'A', 'value': 'v'}", "single-quotes"),
    (b'{"name": "A", "value": "v",}', "trailing-comma"),
    (b"[1, 2]", "array-of-numbers"),
    (b'{"name": "A", "value": "v"} trailing', "trailing-text"),
    (b"\xff\xfe{}", "utf16-bom-bytes"),
    (b"[" * 50000, "deep-unclosed-arrays"),
]


@pytest.fixture
async def target(client: httpx.AsyncClient, project: dict[str, str]) -> dict[str, Any]:
    return await created(client, project, "TARGET", "original")


def _request_line(method: str, target: dict[str, Any]) -> tuple[str, str]:
    return method, "/api/secrets" if method == "POST" else f"/api/secrets/{target['id']}"


async def _unchanged(
    client: httpx.AsyncClient, settings: Settings, project: dict[str, str], target: dict[str, Any]
) -> None:
    await still_serving(client, project)
    assert await listed(client, project) == [target]
    assert await stored_value(settings, target) == "original"


@pytest.mark.parametrize("method", ["POST", "PUT"])
@pytest.mark.parametrize("body", [b for b, _ in NOT_A_JSON_OBJECT], ids=[i for _, i in NOT_A_JSON_OBJECT])
async def test_a_body_that_is_not_a_json_object_is_400(
    client: httpx.AsyncClient,
    settings: Settings,
    project: dict[str, str],
    target: dict[str, Any],
    method: str,
    body: bytes,
) -> None:
    method, url = _request_line(method, target)
    response = await client.request(
        method, url, content=body, headers={**auth(project), "Content-Type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "Bad Request"
    assert response.json()["message"]
    await _unchanged(client, settings, project, target)


@pytest.mark.parametrize("method", ["POST", "PUT"])
@pytest.mark.parametrize(
    "payload",
    [{"name": "A", "value": 1e308}, {"name": "A", "value": {"nested": "v"}}, {"name": "A", "value": True}],
    ids=["big-float-value", "object-value", "boolean-value"],
)
async def test_a_json_object_with_wrong_fields_is_422(
    client: httpx.AsyncClient,
    settings: Settings,
    project: dict[str, str],
    target: dict[str, Any],
    method: str,
    payload: dict[str, Any],
) -> None:
    method, url = _request_line(method, target)
    response = await client.request(method, url, json=payload, headers=auth(project))
    assert response.status_code == 422
    await _unchanged(client, settings, project, target)


async def test_an_escaped_nul_is_data_in_a_value_and_invalid_in_a_name(
    client: httpx.AsyncClient, settings: Settings, project: dict[str, str]
) -> None:
    secret = await created(client, project, "WITH_NUL", "a\u0000b")
    assert await stored_value(settings, secret) == "a\u0000b"
    assert (await create(client, project, "A\u0000", "v")).status_code == 422
    assert await listed(client, project) == [secret]


@pytest.mark.parametrize("method", ["POST", "PUT"])
@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/jsonx",
    ],
    ids=["none", "text", "form", "multipart", "jsonx"],
)
async def test_a_body_that_is_not_declared_json_is_refused(
    client: httpx.AsyncClient,
    settings: Settings,
    project: dict[str, str],
    target: dict[str, Any],
    method: str,
    content_type: str | None,
) -> None:
    method, url = _request_line(method, target)
    headers = auth(project) if content_type is None else {**auth(project), "Content-Type": content_type}
    response = await client.request(method, url, content=b'{"name": "B", "value": "new"}', headers=headers)
    # 400, not 415: LangWatch's contract lists no 415.
    assert response.status_code == 400
    assert response.json() == {"error": "Bad Request", "message": "Content-Type must be application/json"}
    await _unchanged(client, settings, project, target)


@pytest.mark.parametrize("method", ["POST", "PUT"])
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_10_mb_body_is_413(
    client: httpx.AsyncClient,
    settings: Settings,
    project: dict[str, str],
    target: dict[str, Any],
    method: str,
    chunked: bool,
) -> None:
    body = b'{"name": "B", "value": "' + b"x" * (10 * 1024 * 1024) + b'"}'

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 65536):
            yield body[start : start + 65536]

    method, url = _request_line(method, target)
    response = await client.request(
        method,
        url,
        content=chunks() if chunked else body,
        headers={**auth(project), "Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert response.json()["error"] == "Payload Too Large"
    await _unchanged(client, settings, project, target)
