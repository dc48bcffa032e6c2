"""What the apps are sent: wrk rounds, the HTTP clients, the event-latency probe (kcat)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import urllib.error
import urllib.request
from collections import Counter
from typing import TYPE_CHECKING, Any

from .processes import Procs

if TYPE_CHECKING:
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

    async def request(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str]
    ) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        if body is not None:
            head.append(f"Content-Length: {len(body)}")
        head += [f"{k}: {v}" for k, v in headers.items()]
        body = body or b""
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
        *route.script_args(prefix, count),
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
    route: Route,
    run_id: str,
    interval: float,
    duration: float,
) -> dict[str, Any]:
    """During a service round: one request of the route every interval on its own connection, each
    with X-Request-ID PROBE-<runid>-<n>; kcat notes when the event carrying that request id is readable.

    Its requests are not wrk's: "probes" (sent) and "probes_<ok>" count them for the verification.
    """
    start_ms = int(time.time() * 1000) - 2000
    kcat = await asyncio.create_subprocess_exec(
        "kcat", "-C", "-b", bootstrap, "-t", topic, "-o", f"s@{start_ms}", "-u", "-q",
        "-X", "fetch.wait.max.ms=100", "-f", "%T %s\n",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, limit=1 << 20,
    )  # fmt: skip
    procs.async_pids[kcat.pid] = "kcat"
    request_id = re.compile(rb'"requestId":"PROBE-' + run_id.encode() + rb'-(\d+)"')
    arrivals: dict[int, tuple[float, int]] = {}
    probes: dict[int, float] = {}
    wanted_done = asyncio.Event()

    async def consume() -> None:
        assert kcat.stdout is not None
        while True:
            line = await kcat.stdout.readline()
            if not line:
                return
            found = request_id.search(line)
            if found is None:
                continue
            now = time.time()
            n = int(found.group(1))
            ts = line.partition(b" ")[0]
            if n not in arrivals:
                arrivals[n] = (now, int(ts) if ts.isdigit() else 0)
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
            method, path, payload = route.probe(n, run_id)
            headers = {"X-Auth-Token": route.token, "X-Request-ID": f"PROBE-{run_id}-{n}"}
            body = None
            if payload is not None:
                body = json.dumps(payload).encode()
                headers["Content-Type"] = "application/json"
            t_send = time.time()
            status, _ = await client.request(method, path, body, headers)
            t_ok = time.time()
            statuses[status] += 1
            if status == route.ok:
                probes[n] = t_ok
                request_ms.append((t_ok - t_send) * 1000)
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
        f"probes_{route.ok}": len(probes),
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
        # the record's timestamp (set by the relay's producer at send time) minus the answer
        "producer_timestamp_minus_201_ms": {"p50": pct(produce, 50), "p99": pct(produce, 99)},
        "probe_request_ms": {"p50": pct(request_ms, 50), "p99": pct(request_ms, 99)},
    }
