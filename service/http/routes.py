"""HTTP routes: authenticate and authorize, parse, hand to the vault, shape the answer."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service import logs, metrics
from service.accounts.model import MANAGE, READ, VIEW, Principal
from service.http.openapi import openapi_document
from service.http.responses import NO_STORE, JSONResponse, secret_metadata, secret_value, tagged
from service.http.validation import (
    check_json_content_type,
    parse_if_match,
    parse_json_object,
    parse_new_secret,
    parse_value,
    parse_version,
)


def presented_key(headers: Headers) -> str | None:
    """The key from X-Auth-Token, or from Authorization: Bearer, as LangWatch accepts both."""
    token = headers.get("x-auth-token")
    if not token:
        scheme, _, credentials = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            token = credentials
    return token


async def caller(request: Request, scope: str) -> Principal:
    """The authenticated caller, if its key holds `scope` (401 without a valid key, 403 without the
    scope) and is within its rate limit (429): value reads count against a limit of their own."""
    principal: Principal = await request.state.auth.authenticate(presented_key(request.headers))
    logs.PROJECT_ID.set(principal.project_id)
    logs.API_KEY_ID.set(principal.api_key_id)
    principal.require(scope)
    request.state.limits.take(principal.api_key_id, "reads" if scope == READ else "requests")
    return principal


async def create_secret(request: Request) -> Response:
    state, headers = request.state, request.headers
    principal = await caller(request, MANAGE)
    check_json_content_type(headers.get("content-type"))
    new = parse_new_secret(parse_json_object(await request.body()))
    created = await state.vault.create(principal, new, state.request_id, headers.get("idempotency-key"))
    answer_headers = {"Location": f"/api/secrets/{created.record.id}", **tagged(created.record.version)}
    if created.replayed:
        answer_headers["Idempotent-Replayed"] = "true"
    return JSONResponse(secret_metadata(created.record), 201, headers=answer_headers)


async def list_secrets(request: Request) -> Response:
    principal = await caller(request, VIEW)
    records = await request.state.vault.list_secrets(principal)
    return JSONResponse([secret_metadata(record) for record in records], headers=NO_STORE)


async def get_secret(request: Request) -> Response:
    principal = await caller(request, VIEW)
    record = await request.state.vault.get(principal, request.path_params["id"])
    return JSONResponse(secret_metadata(record), headers=tagged(record.version))


async def update_secret(request: Request) -> Response:
    principal = await caller(request, MANAGE)
    if_match = parse_if_match(request.headers.get("if-match"))
    check_json_content_type(request.headers.get("content-type"))
    value = parse_value(parse_json_object(await request.body()))
    record = await request.state.vault.update(
        principal, request.path_params["id"], value, request.state.request_id, if_match
    )
    return JSONResponse(secret_metadata(record), headers=tagged(record.version))


async def delete_secret(request: Request) -> Response:
    principal = await caller(request, MANAGE)
    if_match = parse_if_match(request.headers.get("if-match"))
    record = await request.state.vault.delete(
        principal, request.path_params["id"], request.state.request_id, if_match
    )
    return JSONResponse({"id": record.id, "deleted": True}, headers=tagged(record.version))


async def list_versions(request: Request) -> Response:
    principal = await caller(request, VIEW)
    versions = await request.state.vault.versions(principal, request.path_params["id"])
    body = [{"version": v.version, "createdAt": v.created_at} for v in versions]
    return JSONResponse(body, headers=NO_STORE)


async def restore_version(request: Request) -> Response:
    principal = await caller(request, MANAGE)
    if_match = parse_if_match(request.headers.get("if-match"))
    version = parse_version(request.path_params["version"])
    record = await request.state.vault.restore(
        principal, request.path_params["id"], version, request.state.request_id, if_match
    )
    return JSONResponse(secret_metadata(record), headers=tagged(record.version))


async def read_value(request: Request) -> Response:
    principal = await caller(request, READ)
    raw_version = request.query_params.get("version")
    version = None if raw_version is None else parse_version(raw_version)
    value = await request.state.vault.read_value(
        principal, request.state.request_id, secret_id=request.path_params["id"], version=version
    )
    return JSONResponse(secret_value(value), headers=tagged(value.version))


async def read_value_by_name(request: Request) -> Response:
    principal = await caller(request, READ)
    value = await request.state.vault.read_value(
        principal, request.state.request_id, name=request.path_params["name"]
    )
    return JSONResponse(secret_value(value), headers=tagged(value.version))


async def health(request: Request) -> Response:
    """Liveness: the process answers (nothing else is checked: restarting it would not help them)."""
    return JSONResponse({"status": "ok"}, headers=NO_STORE)


async def ready(request: Request) -> Response:
    """Readiness: not draining, the database answers with its schema current, storage has room."""
    await request.state.readiness.check()
    return JSONResponse({"status": "ready"}, headers=NO_STORE)


async def openapi(request: Request) -> Response:
    return JSONResponse(openapi_document())


async def metrics_text(request: Request) -> Response:
    """Every metric in the Prometheus text format (on the service's port unless METRICS_PORT is set)."""
    return Response(metrics.exposition(), headers={"Content-Type": metrics.CONTENT_TYPE, **NO_STORE})


METRICS_ROUTE = Route("/metrics", metrics_text, methods=["GET"])


async def asyncapi(request: Request) -> Response:
    """The AsyncAPI document of the event topic (built for this service's topic and source)."""
    return JSONResponse(request.state.asyncapi)


Endpoint = Callable[[Request], Awaitable[Response]]


def _by_method(handlers: dict[str, Endpoint]) -> Endpoint:
    """One route per path, so a 405 lists every method of the path in Allow (HTTPEndpoint costs more)."""

    async def endpoint(request: Request) -> Response:
        return await handlers["GET" if request.method == "HEAD" else request.method](request)

    return endpoint


# Starlette tries routes in order, and no two of these match one path: the busiest come first
# (a sync agent's read by name would otherwise be matched against five routes before its own).
routes = [
    Route("/api/secrets", _by_method({"GET": list_secrets, "POST": create_secret}), methods=["GET", "POST"]),
    Route("/api/secrets/by-name/{name}/value", read_value_by_name, methods=["GET"]),
    Route(
        "/api/secrets/{id}",
        _by_method({"GET": get_secret, "PUT": update_secret, "DELETE": delete_secret}),
        methods=["GET", "PUT", "DELETE"],
    ),
    Route("/api/secrets/{id}/value", read_value, methods=["GET"]),
    Route("/api/secrets/{id}/versions", list_versions, methods=["GET"]),
    Route("/api/secrets/{id}/versions/{version}/restore", restore_version, methods=["POST"]),
    Route("/healthz", health, methods=["GET"]),
    Route("/readyz", ready, methods=["GET"]),
    Route("/openapi.json", openapi, methods=["GET"]),
    Route("/asyncapi.json", asyncapi, methods=["GET"]),
]
