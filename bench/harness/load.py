"""What the apps are sent: wrk rounds, the HTTP clients, the event-latency probe (kcat)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.error
import urllib.request
from collections import Counter
from typing import Any

from .processes import Procs
from .routes import Route


def http(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None, timeout: float = 5):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class AsyncHttp:
    """A minimal keep-alive HTTP/1.1 client on one connection (the event-latency probe)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = [f"POST {path} HTTP/1.1", f"Host: {self.host}:{self.port}", f"Content-Length: {len(body)}"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        await self.writer.drain()
        status_line = await self.reader.readline()
        status = int(status_line.split()[1])
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        payload = await self.reader.readexactly(length)
        return status, payload

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


async def wrk(
    procs: Procs,
    route: Route,
    port: int,
    token: str,
    prefix: str,
    duration: float,
    count: bool,
    *,
    threads: int,
    connections: int,
    timeout: float,
) -> dict[str, Any]:
    """One wrk run of the route's script; its BENCH_RESULT line, parsed."""
    argv = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        f"--timeout={max(1, round(timeout))}s",
        "-s",
        str(route.script),
        f"http://127.0.0.1:{port}{route.path}",
        "--",
        *route.script_args(token, prefix, count),
    ]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    procs.async_pids[proc.pid] = "wrk"
    try:
        out, err = await asyncio.wait_for(proc.communicate(), duration + timeout + 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        procs.async_pids.pop(proc.pid, None)
    text = out.decode()
    for line in text.splitlines():
        if line.startswith("BENCH_RESULT "):
            return json.loads(line[len("BENCH_RESULT ") :])
    raise RuntimeError(f"wrk gave no result (exit {proc.returncode}):\n{text}\n{err.decode()}")


async def event_probe(
    procs: Procs,
    *,
    bootstrap: str,
    topic: str,
    port: int,
    token: str,
    run_id: str,
    interval: float,
    duration: float,
) -> dict[str, Any]:
    """During a service round: a create every interval on its own connection; kcat notes arrivals.

    Its creates are not wrk's: "probes" (sent) and "probes_201" count them for the verification.
    """
    start_ms = int(time.time() * 1000) - 2000
    kcat = await asyncio.create_subprocess_exec(
        "kcat", "-C", "-b", bootstrap, "-t", topic, "-o", f"s@{start_ms}", "-u", "-q",
        "-X", "fetch.wait.max.ms=100", "-f", "%k %T\n",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    procs.async_pids[kcat.pid] = "kcat"
    arrivals: dict[str, tuple[float, int]] = {}
    probes: dict[str, float] = {}
    wanted_done = asyncio.Event()

    async def consume() -> None:
        assert kcat.stdout is not None
        while True:
            line = await kcat.stdout.readline()
            if not line:
                return
            now = time.time()
            key, _, ts = line.decode().strip().partition(" ")
            if key not in arrivals:
                arrivals[key] = (now, int(ts) if ts.isdigit() else 0)
            if probes_done and all(k in arrivals for k in probes):
                wanted_done.set()

    probes_done = False
    consumer = asyncio.create_task(consume())
    client = AsyncHttp("127.0.0.1", port)
    request_ms: list[float] = []
    statuses: Counter[int] = Counter()
    await asyncio.sleep(min(1.0, duration / 5))  # let the load ramp up
    t_end = time.monotonic() + duration - 2 * min(1.0, duration / 5)
    n = 0
    next_at = time.monotonic()
    try:
        while time.monotonic() < t_end:
            n += 1
            body = json.dumps({"name": f"PROBE_{run_id}_{n}", "value": "probe"}).encode()
            t_send = time.time()
            status, payload = await client.post(
                "/api/secrets", body, {"Content-Type": "application/json", "X-Auth-Token": token}
            )
            t_201 = time.time()
            statuses[status] += 1
            if status == 201:
                probes[json.loads(payload)["id"]] = t_201
                request_ms.append((t_201 - t_send) * 1000)
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    finally:
        await client.close()
    probes_done = True
    if all(k in arrivals for k in probes):
        wanted_done.set()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(wanted_done.wait(), 30)
    kcat.terminate()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(kcat.wait(), 10)
    if kcat.returncode is None:
        kcat.kill()
    procs.async_pids.pop(kcat.pid, None)
    consumer.cancel()
    with contextlib.suppress(BaseException):
        await consumer
    lat = [(arrivals[k][0] - t) * 1000 for k, t in probes.items() if k in arrivals]
    produce = [
        (arrivals[k][1] / 1000 - t) * 1000 for k, t in probes.items() if k in arrivals and arrivals[k][1]
    ]
    missing = sum(1 for k in probes if k not in arrivals)
    return {
        "probes": n,
        "probes_201": len(probes),
        "statuses": {str(k): v for k, v in statuses.items()},
        "interval_s": interval,
        "events_seen": len(lat),
        "events_missing": missing,
        "latency_ms": {
            "p50": pct(lat, 50),
            "p90": pct(lat, 90),
            "p99": pct(lat, 99),
            "max": max(lat) if lat else None,
        },
        # the record's timestamp (set by the relay's producer at send time) minus the 201
        "producer_timestamp_minus_201_ms": {"p50": pct(produce, 50), "p99": pct(produce, 99)},
        "probe_request_ms": {"p50": pct(request_ms, 50), "p99": pct(request_ms, 99)},
    }
