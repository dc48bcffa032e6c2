"""The bare-framework ceiling: one Starlette route per benchmarked route, no database, no crypto, no auth.

Each does what the framework must for its route and nothing the service does, and
answers a same-shaped body:

    POST /api/secrets                     parses the JSON body (``await request.json()``);
                                          201 {id, projectId, name, createdAt, updatedAt, version}
    PUT  /api/secrets/{id}                takes the path parameter, parses the JSON body;
                                          200 {id, projectId, name, createdAt, updatedAt, version}
    GET  /api/secrets/by-name/{name}/value  takes the path parameter;
                                          200 {id, name, value, version, updatedAt}

Served by uvicorn with the service's own settings (see service/cli.py): uvloop,
httptools, one process, lifespan on, no access log, no server header.

    python bench/bare_app.py --host 127.0.0.1 --port 18081
"""

from __future__ import annotations

import argparse
import uuid
from datetime import UTC, datetime

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

PROJECT_ID = "project_" + uuid.uuid4().hex
# As long as the value bench/run stores for the read route.
VALUE = "bench-value-0123456789abcdef-0123456789abcdef"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def create(request: Request) -> Response:
    body = await request.json()
    now = _now()
    return JSONResponse(
        {
            "id": str(uuid.uuid4()),
            "projectId": PROJECT_ID,
            "name": body["name"],
            "createdAt": now,
            "updatedAt": now,
            "version": 1,
        },
        201,
    )


async def update(request: Request) -> Response:
    await request.json()
    now = _now()
    return JSONResponse(
        {
            "id": request.path_params["id"],
            "projectId": PROJECT_ID,
            "name": "BENCH_SECRET",
            "createdAt": now,
            "updatedAt": now,
            "version": 2,
        }
    )


async def read_value(request: Request) -> Response:
    return JSONResponse(
        {
            "id": str(uuid.uuid4()),
            "name": request.path_params["name"],
            "value": VALUE,
            "version": 1,
            "updatedAt": _now(),
        }
    )


app = Starlette(
    routes=[
        Route("/api/secrets", create, methods=["POST"]),
        Route("/api/secrets/{id}", update, methods=["PUT"]),
        Route("/api/secrets/by-name/{name}/value", read_value, methods=["GET"]),
    ]
)


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18081)
    args = parser.parse_args()
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_config=None,
        access_log=False,
        server_header=False,
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
