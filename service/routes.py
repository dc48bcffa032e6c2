"""HTTP routes: authenticate, parse, hand to the vault, shape the answer."""

from __future__ import annotations

from starlette.endpoints import HTTPEndpoint
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.errors import NO_STORE
from service.openapi import openapi_document
from service.responses import JSONResponse
from service.validation import check_json_content_type, parse_json_object, parse_new_secret, parse_value


async def create_secret(request: Request) -> Response:
    principal = await request.state.auth.authenticate(request.headers)
    check_json_content_type(request.headers.get("content-type"))
    new = parse_new_secret(parse_json_object(await request.body()))
    created = await request.state.vault.create(
        principal, new, request.state.request_id, request.headers.get("idempotency-key")
    )
    headers = {"Location": f"/api/secrets/{created.record.id}", **NO_STORE}
    if created.replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(created.record.to_json(), 201, headers=headers)


async def list_secrets(request: Request) -> Response:
    principal = await request.state.auth.authenticate(request.headers)
    records = await request.state.vault.list(principal)
    return JSONResponse([record.to_json() for record in records], headers=NO_STORE)


async def get_secret(request: Request) -> Response:
    principal = await request.state.auth.authenticate(request.headers)
    record = await request.state.vault.get(principal, request.path_params["id"])
    return JSONResponse(record.to_json(), headers=NO_STORE)


async def update_secret(request: Request) -> Response:
    principal = await request.state.auth.authenticate(request.headers)
    check_json_content_type(request.headers.get("content-type"))
    value = parse_value(parse_json_object(await request.body()))
    record = await request.state.vault.update(
        principal, request.path_params["id"], value, request.state.request_id
    )
    return JSONResponse(record.to_json(), headers=NO_STORE)


async def delete_secret(request: Request) -> Response:
    principal = await request.state.auth.authenticate(request.headers)
    record = await request.state.vault.delete(principal, request.path_params["id"], request.state.request_id)
    return JSONResponse({"id": record.id, "deleted": True}, headers=NO_STORE)


async def health(request: Request) -> Response:
    await request.state.store.read(lambda conn: conn.fetch_val("SELECT 1"))
    return JSONResponse({"status": "ok"}, headers=NO_STORE)


async def openapi(request: Request) -> Response:
    return JSONResponse(openapi_document())


class _Secrets(HTTPEndpoint):
    # One route per path, so a 405 lists every method the path has in Allow.
    get = staticmethod(list_secrets)
    post = staticmethod(create_secret)


class _Secret(HTTPEndpoint):
    get = staticmethod(get_secret)
    put = staticmethod(update_secret)
    delete = staticmethod(delete_secret)


routes = [
    Route("/api/secrets", _Secrets),
    Route("/api/secrets/{id}", _Secret),
    Route("/healthz", health, methods=["GET"]),
    Route("/openapi.json", openapi, methods=["GET"]),
]
