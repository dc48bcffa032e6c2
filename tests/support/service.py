"""`secrets-service serve` as a real process: start, stop, kill, drive creates over HTTP, check the topic.

Every process a test starts through these helpers is stopped at teardown by the fixture
that made it (`deploy` in tests/conftest.py), also on failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from service.events.kafka import KafkaConnection
from service.events.relay import CursorProgress
from service.settings import Settings
from tests.support.kafka import record_headers, wait_for_records
from tests.support.leaks import CANARY, leaked
from tests.support.paths import ROOT
from tests.support.ports import free_port

GRACEFUL_SECONDS = 10.0
# A connection refused, reset or closed before any response: the request was not answered.
UNANSWERED = (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


def executable() -> str:
    script = Path(sys.executable).parent / "secrets-service"
    return str(script if script.exists() else ROOT / ".venv" / "bin" / "secrets-service")


class Service:
    """One `secrets-service serve` at a time on a given database; restartable, logs kept in files."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.env = env
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.logs: list[Path] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *extra: str) -> None:
        assert self.process is None or self.process.poll() is not None, "already running"
        self.port = free_port()
        log_path = self.workdir / f"service-{len(self.logs)}.log"
        self.logs.append(log_path)
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    executable(),
                    "serve",
                    "--port",
                    str(self.port),
                    "--graceful-shutdown-seconds",
                    str(GRACEFUL_SECONDS),
                    *extra,
                ],
                env={**os.environ, **self.env, "PYTHONUNBUFFERED": "1"},
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    async def start_healthy(self, timeout: float = 60) -> None:
        self.start()
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=5) as http:
            while True:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise AssertionError(f"service exited with {self.process.returncode} during startup")
                try:
                    if (await http.get(f"{self.url}/healthz")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"service not healthy within {timeout:.0f}s")
                await asyncio.sleep(0.1)

    def send(self, sig: signal.Signals) -> None:
        assert self.process is not None and self.process.poll() is None, "not running"
        self.process.send_signal(sig)

    async def wait_exit(self, timeout: float) -> int:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"service still running {timeout:.0f}s after it was told to stop")
            await asyncio.sleep(0.05)
        return self.process.returncode

    async def stop(self, timeout: float = 30) -> int:
        """SIGTERM and wait (the service drains, the relay flushes)."""
        self.send(signal.SIGTERM)
        return await self.wait_exit(timeout)

    def kill(self) -> None:
        """Teardown: make sure nothing is left running."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)

    def log_text(self) -> bytes:
        return b"".join(path.read_bytes() for path in self.logs if path.exists())

    @property
    def db_path(self) -> str:
        return self.env["DATABASE_URL"].removeprefix("sqlite:///")

    def pending_events(self) -> int:
        with contextlib.closing(sqlite3.connect(self.db_path, timeout=30)) as db:
            return int(db.execute(CursorProgress().count_pending().sql).fetchone()[0])

    def rss_peak_kib(self) -> int:
        """The process's peak resident memory so far (VmHWM)."""
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise AssertionError("no VmHWM in /proc status")


@dataclass
class Deployment:
    """A service (not started), its settings, and a project whose API key the test uses."""

    service: Service
    settings: Settings
    project: dict[str, str]
    master_keys: str

    @property
    def topic(self) -> str:
        return self.settings.kafka_topic

    @property
    def headers(self) -> dict[str, str]:
        return {"X-Auth-Token": self.project["apiKey"]}

    async def list_secrets(self) -> list[dict[str, Any]]:
        async with httpx.AsyncClient(base_url=self.service.url, timeout=30) as http:
            response = await http.get("/api/secrets", headers=self.headers)
        assert response.status_code == 200
        listed: list[dict[str, Any]] = response.json()
        return listed

    def assert_logs_clean(self, *more: tuple[str, str], extra_logs: Sequence[bytes] = ()) -> None:
        """No secret in the service's log (nor in `extra_logs`); `more` adds (label, secret) pairs."""
        log = self.service.log_text()
        assert log, "the service wrote no log at all: is its output captured?"
        for label, secret in (
            ("the canary value", CANARY),
            ("the master key", self.master_keys),
            ("the master key material", self.master_keys.split(":", 1)[-1]),
            ("the API key", self.project["apiKey"]),
            *more,
        ):
            assert not any(leaked(secret, blob) for blob in extra_logs), f"a log contains {label}"
            assert not leaked(secret, log), f"the service log contains {label} (or its hex/base64)"


DeploymentFactory = Callable[..., Any]


DeploymentFactory = Callable[..., Any]


@dataclass
class Outcome:
    name: str
    at: float  # time.monotonic() when the answer (or the error) arrived
    status: int | None = None
    secret_id: str | None = None
    error: type[BaseException] | None = None


async def drive_creates(
    deployment: Deployment,
    names: Sequence[str],
    concurrency: int,
    on_outcome: Callable[[list[Outcome]], None] | None = None,
    pause: float = 0.0,
    stop: asyncio.Event | None = None,
    outcomes: list[Outcome] | None = None,
    timeout: float = 120,
) -> list[Outcome]:
    """POST a secret per name from `concurrency` workers; a worker stops at its first unanswered request.

    Outcomes are appended to `outcomes` (when given) as they arrive, and returned.
    """
    pending = iter(names)
    outcomes = [] if outcomes is None else outcomes
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(base_url=deployment.service.url, timeout=30, limits=limits) as http:

        async def worker() -> None:
            for name in pending:
                if stop is not None and stop.is_set():
                    return
                value = CANARY if name.endswith("_0") else f"value-of-{name}"
                try:
                    response = await http.post(
                        "/api/secrets", json={"name": name, "value": value}, headers=deployment.headers
                    )
                except UNANSWERED as exc:
                    outcomes.append(Outcome(name, time.monotonic(), error=type(exc)))
                    if on_outcome is not None:
                        on_outcome(outcomes)
                    return
                body = response.json() if response.status_code == 201 else {}
                outcomes.append(Outcome(name, time.monotonic(), response.status_code, body.get("id")))
                if on_outcome is not None:
                    on_outcome(outcomes)
                if pause:
                    await asyncio.sleep(pause)

        async with asyncio.timeout(timeout):
            await asyncio.gather(*(worker() for _ in range(concurrency)))
    return outcomes


def created_ids(records: list[Any]) -> set[str]:
    """Secret ids that have a secret.created event, by the secretId in the event data."""
    return {
        json.loads(r.value)["secretId"]
        for r in records
        if record_headers(r).get("ce_type") == "secret.created"
    }


async def assert_every_stored_secret_has_its_event(
    deployment: Deployment, kafka: str | KafkaConnection, timeout: float = 90
) -> tuple[list[dict[str, Any]], list[Any]]:
    """The API's list and the topic agree: every stored secret has a secret.created event, and no event
    describes a secret that is not stored."""
    listed = await deployment.list_secrets()
    stored = {s["id"] for s in listed}
    records = await wait_for_records(
        kafka,
        deployment.topic,
        lambda rs: created_ids(rs) >= stored,
        timeout=timeout,
        what=f"secret.created events for all {len(stored)} stored secrets",
    )
    phantom = created_ids(records) - stored
    assert not phantom, f"{len(phantom)} events describe secrets that are not stored"
    names = {json.loads(r.value)["secretId"]: json.loads(r.value)["name"] for r in records}
    assert all(names[s["id"]] == s["name"] for s in listed)
    return listed, records


async def audit_consume(
    env: dict[str, str], workdir: Path, output: Path, group: str, idle_exit_seconds: float = 5
) -> tuple[int, bytes]:
    """Run `secrets-service audit-consume` until it has been idle `idle_exit_seconds`: its exit code and
    its output (stdout and stderr)."""
    log_path = workdir / f"audit-consume-{group}.log"
    with log_path.open("ab") as log:
        done = await asyncio.to_thread(
            subprocess.run,
            [
                executable(),
                "audit-consume",
                "--output",
                str(output),
                "--group",
                group,
                "--idle-exit-seconds",
                str(idle_exit_seconds),
            ],
            env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=120,
        )
    return done.returncode, log_path.read_bytes()
