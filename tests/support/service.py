"""A real `secrets-service serve` process: started on a free port, restarted, signalled, killed."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx

from service.events.relay import CursorProgress
from tests.support.paths import ROOT
from tests.support.ports import free_port

GRACEFUL_SECONDS = 10.0


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
