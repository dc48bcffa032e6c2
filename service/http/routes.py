"""HTTP routes: authenticate, parse, hand to the vault, shape the answer."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.http.openapi import openapi_document
from service.http.responses import NO_STORE, JSONResponse, secret_metadata
from service.http.validation import check_json_content_type, parse_json_object, parse_new_secret, parse_value


def presented_key(headers: Headers) -> str | None:
    """The key from X-Auth-Token, or from Authorization: Bearer, as LangWatch accepts both."""
    token = headers.get("x-auth-token")
    if not token:
        scheme, _, credentials = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            token = credentials
    return token


async def create_secret(request: Request) -> Response:
    state, headers = request.state, request.headers
    principal = await state.auth.authenticate(presented_key(headers))
    check_json_content_type(headers.get("content-type"))
    new = parse_new_secret(parse_json_object(await request.body()))
    created = await state.vault.create(principal, new, state.request_id, headers.get("idempotency-key"))
    answer_headers = {"Location": f"/api/secrets/{created.record.id}", **NO_STORE}
    if created.replayed:
        answer_headers["Idempotent-Replayed"] = "true"
    return JSONResponse(secret_metadata(created.record), 201, headers=answer_headers)


async def list_secrets(request: Request) -> Response:
    principal = await request.state.auth.authenticate(presented_key(request.headers))
    records = await request.state.vault.list(principal)
    return JSONResponse([secret_metadata(record) for record in records], headers=NO_STORE)


async def get_secret(request: Request) -> Response:
    principal = await request.state.auth.authenticate(presented_key(request.headers))
    record = await request.state.vault.get(principal, request.path_params["id"])
    return JSONResponse(secret_metadata(record), headers=NO_STORE)


async def update_secret(request: Request) -> Response:
    principal = await request.state.auth.authenticate(presented_key(request.headers))
    check_json_content_type(request.headers.get("content-type"))
    value = parse_value(parse_json_object(await request.body()))
    record = await request.state.vault.update(
        principal, request.path_params["id"], value, request.state.request_id
    )
    return JSONResponse(secret_metadata(record), headers=NO_STORE)


async def delete_secret(request: Request) -> Response:
    principal = await request.state.auth.authenticate(presented_key(request.headers))
    record = await request.state.vault.delete(principal, request.path_params["id"], request.state.request_id)
    return JSONResponse({"id": record.id, "deleted": True}, headers=NO_STORE)


async def health(request: Request) -> Response:
    await request.state.store.ping()
    return JSONResponse({"status": "ok"}, headers=NO_STORE)


async def openapi(request: Request) -> Response:
    return JSONResponse(openapi_document())


Endpoint = Callable[[Request], Awaitable[Response]]


def _by_method(handlers: dict[str, Endpoint]) -> Endpoint:
    """One route per path, so a 405 lists every method of the path in Allow (HTTPEndpoint costs more)."""

    async def endpoint(request: Request) -> Response:
        return await handlers["GET" if request.method == "HEAD" else request.method](request)

    return endpoint


routes = [
    Route("/api/secrets", _by_method({"GET": list_secrets, "POST": create_secret}), methods=["GET", "POST"]),
    Route(
        "/api/secrets/{id}",
        _by_method({"GET": get_secret, "PUT": update_secret, "DELETE": delete_secret}),
        methods=["GET", "PUT", "DELETE"],
    ),
    Route("/healthz", health, methods=["GET"]),
    Route("/openapi.json", openapi, methods=["GET"]),
]
