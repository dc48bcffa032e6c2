"""The bare-framework ceiling: one Starlette POST route, no database, no crypto, no auth.

It parses the same JSON body as POST /api/secrets (``await request.json()``) and answers
a same-shaped 201 (id, projectId, name, createdAt, updatedAt, version). Served by uvicorn with the
service's own settings (see service/cli.py): uvloop, httptools, one process, lifespan on,
no access log, no server header.

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


async def create(request: Request) -> Response:
    body = await request.json()
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
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


app = Starlette(routes=[Route("/api/secrets", create, methods=["POST"])])


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
