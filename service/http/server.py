"""Serving the app with uvicorn: limits on what a connection may hold before it is authenticated,
and a drain that readiness probes see first.

uvicorn's httptools protocol has no limit on the size of a request head, and no
deadline for a head or a body to arrive, so one connection could hold any amount of
memory, and a slow one any connection slot, before any authentication. This protocol
adds them: a head larger than `max_head_bytes` is answered 431 and the connection
closed (the parser is never fed more than that), a head that does not arrive within
`head_timeout` (counted from the connection, or from the first byte of the next
request) and a body that does not arrive within `body_timeout` close the connection.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

logger = logging.getLogger("service.http")


@dataclass(frozen=True)
class ConnectionLimits:
    max_head_bytes: int = 16384
    head_timeout: float = 10.0
    body_timeout: float = 10.0


def _error_answer(status: int, reason: str, message: str) -> bytes:
    body = orjson.dumps({"error": reason, "message": message})
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        "cache-control: no-store\r\nconnection: close\r\n\r\n"
    ).encode() + body


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a bounded request head and deadlines for head and body."""

    def __init__(self, *args: Any, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self.reading_head = True
        self.head_bytes = 0
        # The deadline is a time and a name; one timer per connection checks it when due, and is
        # only replaced when a deadline comes sooner than it (a timer per request each way cost more).
        self.deadline: float | None = None
        self.awaited = "head"
        self.timer: Any = None
        self.timer_at = 0.0

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self.arm(self.limits.head_timeout, "head")

    def connection_lost(self, exc: Exception | None) -> None:
        self.disarm()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self.reading_head:
            super().data_received(data)
            return
        if self.deadline is None:
            self.arm(self.limits.head_timeout, "head")
        room = self.limits.max_head_bytes - self.head_bytes
        head, rest = data[:room], data[room:]
        self.head_bytes += len(head)
        if head:
            super().data_received(head)
        if rest:
            if self.reading_head:
                self.refuse(431, "Request Header Fields Too Large", "The request head is too large")
                return
            self.data_received(rest)

    def on_headers_complete(self) -> None:
        self.reading_head = False
        self.head_bytes = 0
        self.arm(self.limits.body_timeout, "body")
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.disarm()
        self.reading_head = True

    def arm(self, seconds: float, what: str) -> None:
        self.deadline = self.loop.time() + seconds
        self.awaited = what
        if self.timer is None or self.timer_at > self.deadline:
            if self.timer is not None:
                self.timer.cancel()
            self.timer_at = self.deadline
            self.timer = self.loop.call_at(self.deadline, self.check_deadline)

    def disarm(self) -> None:
        self.deadline = None

    def check_deadline(self) -> None:
        self.timer = None
        if self.deadline is None:
            return
        if self.loop.time() < self.deadline:
            self.timer_at = self.deadline
            self.timer = self.loop.call_at(self.deadline, self.check_deadline)
            return
        self.expire(self.awaited)

    def expire(self, what: str) -> None:
        self.deadline = None
        if self.transport.is_closing():
            return
        logger.info("closing a connection whose request %s did not arrive in time", what)
        if what == "head" and self.head_bytes:
            self.refuse(408, "Request Timeout", "The request head did not arrive in time")
        else:
            self.transport.close()

    def refuse(self, status: int, reason: str, message: str) -> None:
        self.disarm()
        self.transport.write(_error_answer(status, reason, message))
        self.transport.close()


class Lifecycle:
    """Whether this process is draining: readiness probes see it before the listener closes."""

    def __init__(self) -> None:
        self.draining = False


class Server(uvicorn.Server):
    """uvicorn's server, whose SIGINT/SIGTERM first marks the process draining, then, `drain_delay`
    seconds later (time for readiness probes and load balancers to move traffic away), starts
    uvicorn's graceful shutdown; a drained shutdown exits 0."""

    def __init__(self, config: uvicorn.Config, lifecycle: Lifecycle, drain_delay: float) -> None:
        super().__init__(config)
        self.lifecycle = lifecycle
        self.drain_delay = drain_delay

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn's own version re-raises the signal once it has drained, so a drained SIGTERM
        # would end the process as killed by it.
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.drain) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def drain(self, sig: int, frame: Any) -> None:
        if self.lifecycle.draining or self.drain_delay <= 0:
            self.lifecycle.draining = True
            self.handle_exit(sig, frame)
            return
        self.lifecycle.draining = True
        logger.info("draining: /readyz answers 503; shutting down in %.1fs", self.drain_delay)
        timer = threading.Timer(self.drain_delay, self.handle_exit, (sig, frame))
        timer.daemon = True
        timer.start()


def protocol(limits: ConnectionLimits) -> Any:
    """The protocol class uvicorn instantiates per connection."""
    return functools.partial(GuardedHttpToolsProtocol, limits=limits)
