"""A `secrets-service serve` process on a free port, for tests that need a real socket."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from tests.support.paths import ROOT
from tests.support.ports import free_port


def console_script(name: str) -> str:
    """A console script of the test's own environment (the venv the suite runs in)."""
    script = Path(sys.executable).parent / name
    return str(script if script.exists() else ROOT / ".venv" / "bin" / name)


class ServiceProcess:
    """One `secrets-service serve`; its output goes to `log` (kept for leak checks)."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = env
        self.log = log
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, timeout: float = 60) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [console_script("secrets-service"), "serve", "--port", str(self.port)],
                env={**os.environ, **self.env, "PYTHONUNBUFFERED": "1"},
                cwd=self.log.parent,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=5) as http:
            while True:
                if self.process.poll() is not None:
                    raise AssertionError(f"service exited with {self.process.returncode} during startup")
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get(f"{self.url}/healthz")).status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise AssertionError(f"service not healthy within {timeout:.0f}s")
                await asyncio.sleep(0.1)

    async def stop(self, timeout: float = 30) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                self.process.kill()
                break
            await asyncio.sleep(0.05)
        self.process.wait(timeout=30)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)


@contextlib.asynccontextmanager
async def service_process(env: dict[str, str], workdir: Path) -> AsyncIterator[ServiceProcess]:
    """A started service; stopped (SIGTERM, then SIGKILL) at the end, also on failure."""
    service = ServiceProcess(env, workdir / f"service-{free_port()}.log")
    try:
        await service.start()
        yield service
    finally:
        try:
            await service.stop()
        finally:
            service.kill()
