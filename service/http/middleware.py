"""The one plain-ASGI layer in front of the router, and the only one.

It gives the request an id, caps its body, answers every error in the one shape (a
ServiceError as itself, the router's 404 and 405 as theirs, anything else as the
generic 500) and counts the request. One layer, in place of Starlette's application
with its two exception middlewares: each ASGI wrapper costs calls on every message of
every request, and this path is the service's hottest.
"""

from __future__ import annotations

import logging
import re
import time
import traceback
from typing import Any

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import ids, logs, metrics
from service.errors import PayloadTooLarge
from service.http.responses import answer_for, error_response

logger = logging.getLogger("service.errors")

_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")


class EdgeMiddleware:
    """Request id (X-Request-ID, echoed), body limit (413), error answers and request metrics.

    The 500 path logs the exception's type and stack frames, not its text, which can
    quote driver messages or data; it is not re-raised, as the server would log it whole.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # With an app in the scope, Starlette's router raises HTTPException for a 404 or 405 (answered
        # below in the one error shape) where it would otherwise answer in plain text.
        scope["app"] = self
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = ""
        too_large = False
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                candidate = value.decode("latin-1")
                if _REQUEST_ID.fullmatch(candidate):
                    request_id = candidate
            elif name == b"content-length":
                too_large = value.isdigit() and int(value) > self.max_body_bytes
        request_id = request_id or ids.request_id()
        logs.REQUEST_ID.set(request_id)
        started_at = time.perf_counter()
        status = 500
        # Each request gets its own copy of the lifespan state (as uvicorn does, though not every server).
        scope["state"] = {**scope.get("state", {}), "request_id": request_id}
        id_header = (b"x-request-id", request_id.encode())
        started = False

        async def edge_send(message: Message) -> None:
            nonlocal started, status
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                message["headers"] = [*message.get("headers", []), id_header]
            await send(message)

        if too_large:
            await error_response(413, PayloadTooLarge.error, self._too_large())(scope, receive, edge_send)
            _count(scope, status, started_at)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise PayloadTooLarge(self._too_large())
            return message

        try:
            await self.app(scope, limited_receive, edge_send)
        except ClientDisconnect:
            # The client went away mid-request: nothing to answer, and nothing wrong here.
            status = 499
            logger.info("client disconnected during %s %r", scope["method"], scope["path"])
        except Exception as exc:
            response = answer_for(exc)
            if response is None or started:
                frames = "".join(traceback.format_tb(exc.__traceback__))
                logger.error(
                    "unhandled %s on %s %r\n%s", type(exc).__name__, scope["method"], scope["path"], frames
                )
            if not started:
                if response is None:
                    response = error_response(500, "Internal Server Error", "An unexpected error occurred")
                await response(scope, receive, edge_send)
        _count(scope, status, started_at)

    def _too_large(self) -> str:
        return f"Request body must be at most {self.max_body_bytes} bytes"


def _count(scope: Scope, status: int, started_at: float) -> None:
    """The request in the metrics, by its route's template (never its path: a path can name a secret)."""
    route = scope.get("route")
    key = (getattr(route, "path", "unmatched"), scope["method"], status)
    children = _CHILDREN.get(key)
    if children is None:
        # labels() takes a lock and builds its key each time: the few children there are are kept.
        template, method, _ = key
        children = _CHILDREN[key] = (
            metrics.REQUESTS.labels(template, method, str(status)),
            metrics.REQUEST_SECONDS.labels(template, method),
        )
    children[0].inc()
    children[1].observe(time.perf_counter() - started_at)


_CHILDREN: dict[tuple[str, str, int], tuple[Any, Any]] = {}
