"""The relay in a process of its own (`serve --relay=separate`), supervised by the API process.

The API process then spends no CPU on Kafka: under load the relay's work (reading the
outbox, building and sending records, their acknowledgements) ran on the same core and
event loop as the requests. The outbox contract is unchanged: the child is the same
relay (`secrets-service relay`), publishing in commit order, at least once, taking the
same lease on PostgreSQL.

The API process wakes the child after each commit that wrote events by writing a byte
to the child's stdin (coalesced: at most one byte waits in the pipe); the child also
polls. When the API process goes away, the pipe closes and the child flushes and exits.
A child that dies is started again, with a backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Sequence

logger = logging.getLogger("service.events")


class RelayProcess:
    """Starts the relay command as a child process, keeps it running, wakes it, stops it."""

    def __init__(self, argv: Sequence[str], stop_seconds: float) -> None:
        self._argv = list(argv)
        self._stop_seconds = stop_seconds
        self._process: asyncio.subprocess.Process | None = None
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._started = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._supervise(), name="relay-process")
        await asyncio.wait_for(self._started.wait(), 30)

    async def _supervise(self) -> None:
        backoff = 0.5
        while not self._stopping:
            self._process = await asyncio.create_subprocess_exec(*self._argv, stdin=asyncio.subprocess.PIPE)
            self._started.set()
            logger.info("relay process %d started", self._process.pid)
            code = await self._process.wait()
            if self._stopping:
                return
            logger.warning("the relay process exited with %s; starting it again in %.1fs", code, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)

    def wake(self) -> None:
        """Tell the relay that events were committed (a byte on its stdin, unless one is waiting)."""
        process = self._process
        if process is None or process.stdin is None or process.returncode is not None:
            return
        if process.stdin.transport.get_write_buffer_size() == 0:
            with contextlib.suppress(Exception):
                process.stdin.write(b".")

    async def stop(self) -> None:
        """SIGTERM the relay and give it its flush time; SIGKILL after that."""
        self._stopping = True
        process = self._process
        if process is not None and process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), self._stop_seconds + 5)
            except TimeoutError:
                logger.warning("the relay process did not stop in time; killing it")
                process.kill()
                await process.wait()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
