#!/usr/bin/env python3
"""CPU per request of the service's ASGI app and of the bare app, in process: no sockets, no server.

    .venv/bin/python bench/app_cpu.py [--route create|read|update] [--requests N] [--concurrency C]
    .venv/bin/python bench/app_cpu.py --instructions [--route ...]   # machine instructions instead (valgrind)

Each app is called straight through ASGI (scope, receive, send) by C concurrent tasks,
N requests after N of warm-up, on uvloop; the figure is the process's CPU time (every
thread: the event loop's and SQLite's) over N. What wrk rounds add (uvicorn, the
kernel's TCP, wrk itself on the same cores) is left out, and so is most of their
noise: runs of one commit agree within a few percent where wrk rounds differ by ten or
more. So it answers "did this change make the app cheaper?" for A/B runs of two trees
(`PYTHONPATH=<tree> .venv/bin/python bench/app_cpu.py`), not "how fast is the service".

The service runs its real lifespan on a fresh SQLite file (synchronous=NORMAL: an fsync
costs wall time, not CPU) with its relay on; the relay's publisher drops what it is
given, so Kafka's client is not counted. One API key, rate limits off, the auth cache at
its default. `--profile FILE` records the measured requests with py-spy (raw stacks).

`--instructions` counts machine instructions per request instead of CPU time: each app
runs twice under valgrind's callgrind (INSTRUCTION_RUNS requests, then as many again
plus INSTRUCTION_EXTRA), and the difference in instructions over the extra requests is
the figure. It does not move with the machine's load, as CPU time does (by 10-15% here
between runs minutes apart), so a change of a few percent shows, where CPU-time A/B
runs cannot see it. It counts work, not cache misses or system-call latency, and takes
about 1.5-2 minutes per app (valgrind runs Python some 50 times slower).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import orjson

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

Call = Callable[[str, str, bytes], Awaitable[tuple[int, bytes]]]

INSTRUCTION_RUNS = 500
INSTRUCTION_EXTRA = 2000


class DroppingPublisher:
    """The relay's publisher here: every event is taken and dropped (Kafka is not measured)."""

    async def publish(self, events: Sequence[Any]) -> None:
        return None

    async def close(self) -> None:
        return None


def caller(app: Any, state: dict[str, Any], headers: list[tuple[bytes, bytes]]) -> Call:
    async def call(method: str, path: str, body: bytes) -> tuple[int, bytes]:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", b"bench"), (b"content-length", str(len(body)).encode()), *headers],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8080),
            "state": dict(state),
        }
        pending = [{"type": "http.request", "body": body, "more_body": False}]
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            if pending:
                return pending.pop()
            await asyncio.Event().wait()  # no disconnect while the app runs
            raise AssertionError

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app(scope, receive, send)
        return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])

    return call


async def lifespan(app: Any, state: dict[str, Any]) -> Callable[[], Awaitable[None]]:
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await inbox.put({"type": "lifespan.startup"})
    task = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": state}, inbox.get, outbox.put)
    )
    started = await asyncio.wait_for(outbox.get(), 60)
    assert started["type"] == "lifespan.startup.complete", started

    async def stop() -> None:
        await inbox.put({"type": "lifespan.shutdown"})
        await asyncio.wait_for(outbox.get(), 60)
        await task

    return stop


def requests_for(route: str, names: list[str]) -> Callable[[int], tuple[str, str, bytes]]:
    def make(i: int) -> tuple[str, str, bytes]:
        if route == "create":
            return "POST", "/api/secrets", orjson.dumps({"name": f"BENCH_{i}", "value": f"value-{i:032d}"})
        if route == "read":
            return "GET", f"/api/secrets/by-name/{names[i % len(names)]}/value", b""
        return "PUT", f"/api/secrets/{names[i % len(names)]}", orjson.dumps({"value": f"value-{i:032d}"})

    return make


async def measure(
    call: Call,
    make: Callable[[int], tuple[str, str, bytes]],
    n: int,
    concurrency: int,
    ok: int,
    profile: str | None,
) -> tuple[float, float]:
    async def run(start: int) -> None:
        numbers = iter(range(start, start + n))

        async def worker() -> None:
            for i in numbers:
                status, body = await call(*make(i))
                if status != ok:
                    raise SystemExit(f"request {i}: {status} {body[:200]!r}")

        await asyncio.gather(*(worker() for _ in range(concurrency)))

    await run(0)  # warm-up
    gc.freeze()
    spy = None
    if profile:
        py_spy = Path(sys.executable).with_name("py-spy")
        spy = subprocess.Popen(
            [
                str(py_spy),
                "record",
                "-r",
                "250",
                "-f",
                "raw",
                "-o",
                profile,
                "--pid",
                str(os.getpid()),
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        await asyncio.sleep(2.0)
    cpu, wall = time.process_time(), time.perf_counter()
    await run(n)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    if spy is not None:
        spy.send_signal(2)
        spy.wait(timeout=60)
    return cpu / n * 1e6, n / wall


async def service(
    route: str, n: int, concurrency: int, profile: str | None, database_url: str | None = None
) -> tuple[float, float]:
    from service.accounts import admin
    from service.app import create_app
    from service.clock import SystemClock
    from service.crypto import generate_master_key_entry
    from service.db.dialect import open_store
    from service.settings import Settings

    directory = tempfile.mkdtemp(prefix="app-cpu-")
    settings = Settings.from_env(
        {
            "DATABASE_URL": database_url or f"sqlite:///{directory}/secrets.db",
            "SQLITE_SYNCHRONOUS": "NORMAL",
            "SECRETS_MASTER_KEYS": generate_master_key_entry("bench"),
            "API_KEY_HASH_KEY": base64.b64encode(os.urandom(32)).decode(),
            "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9",
            "RATE_LIMIT_PER_SECOND": "0",
            "RATE_LIMIT_READS_PER_SECOND": "0",
            "MAX_SECRETS_PER_PROJECT": "100000000",
            "LOG_LEVEL": "WARNING",
        }
    )
    async with open_store(settings.database, settings.sqlite_synchronous) as store:
        issued = await admin.create_project(store, settings.api_key_hash_key.reveal(), SystemClock(), "bench")
    app = create_app(settings, publisher=DroppingPublisher())
    state: dict[str, Any] = {}
    stop = await lifespan(app, state)
    json_body = [(b"content-type", b"application/json")]
    call = caller(app, state, [(b"x-auth-token", issued.api_key.encode()), *json_body])
    names: list[str] = []
    if route != "create":
        for i in range(1000):
            status, body = await call(
                "POST", "/api/secrets", orjson.dumps({"name": f"SET_{i}", "value": "x" * 40})
            )
            assert status == 201, body
            names.append(f"SET_{i}" if route == "read" else orjson.loads(body)["id"])
    try:
        return await measure(
            call, requests_for(route, names), n, concurrency, 201 if route == "create" else 200, profile
        )
    finally:
        await stop()


async def bare(route: str, n: int, concurrency: int) -> tuple[float, float]:
    from bare_app import app

    state: dict[str, Any] = {}
    stop = await lifespan(app, state)
    call = caller(app, state, [(b"content-type", b"application/json")])
    names = [f"SET_{i}" for i in range(1000)]
    try:
        return await measure(
            call, requests_for(route, names), n, concurrency, 201 if route == "create" else 200, None
        )
    finally:
        await stop()


def instructions(app: str, route: str, concurrency: int, database_url: str | None) -> float:
    """Machine instructions per request of one app (callgrind: two runs, the difference per extra request)."""

    def collected(requests: int) -> int:
        command = [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            __file__,
            "--app",
            app,
            "--route",
            route,
            "--requests",
            str(requests),
            "--concurrency",
            str(concurrency),
            *(["--database-url", database_url] if database_url else []),
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=1800, env=os.environ)
        found = re.search(r"Collected : (\d+)", done.stderr)
        if done.returncode != 0 or found is None:
            raise SystemExit(f"valgrind run failed ({done.returncode}):\n{done.stderr[-2000:]}")
        return int(found.group(1))

    # Each run makes its requests twice (warm-up, then measured): the extra requests are twice INSTRUCTION_EXTRA.
    extra = collected(INSTRUCTION_RUNS + INSTRUCTION_EXTRA) - collected(INSTRUCTION_RUNS)
    return extra / (2 * INSTRUCTION_EXTRA)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--route", choices=("create", "read", "update"), default="create")
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--profile", metavar="FILE", help="py-spy raw stacks of the service's measured requests"
    )
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="machine instructions per request under valgrind, instead of CPU time (needs valgrind)",
    )
    parser.add_argument("--app", choices=("service", "bare"), help="measure one app only")
    parser.add_argument(
        "--database-url",
        metavar="URL",
        help="the service's DATABASE_URL (default: a fresh SQLite file); e.g. PostgreSQL from scripts/postgres-local",
    )
    args = parser.parse_args()
    if args.instructions:
        service_ir = instructions("service", args.route, args.concurrency, args.database_url)
        bare_ir = instructions("bare", args.route, args.concurrency, None)
        print(
            f"{args.route}: service {service_ir:,.0f} instructions/request, bare {bare_ir:,.0f}, "
            f"service/bare {service_ir / bare_ir:.2f}"
        )
        return
    import uvloop

    # As `serve` sets them (service/cli.py).
    gc.set_threshold(20_000, 50, 50)
    sys.setswitchinterval(0.0002)
    if args.app is not None:
        if args.app == "service":
            cpu, rate = uvloop.run(
                service(args.route, args.requests, args.concurrency, args.profile, args.database_url)
            )
        else:
            cpu, rate = uvloop.run(bare(args.route, args.requests, args.concurrency))
        print(f"{args.route}: {args.app} {cpu:.0f} us CPU/request ({rate:,.0f}/s)")
        return
    service_cpu, service_rate = uvloop.run(
        service(args.route, args.requests, args.concurrency, args.profile, args.database_url)
    )
    bare_cpu, bare_rate = uvloop.run(bare(args.route, args.requests, args.concurrency))
    print(
        f"{args.route}: service {service_cpu:.0f} us CPU/request ({service_rate:,.0f}/s), "
        f"bare {bare_cpu:.0f} us ({bare_rate:,.0f}/s), service/bare CPU {service_cpu / bare_cpu:.2f}"
    )


if __name__ == "__main__":
    main()
