"""Free loopback ports for the processes a test starts."""

from __future__ import annotations

import contextlib
import random
import socket


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_server_port() -> int:
    """A free port for a long-lived server a test starts (PostgreSQL), within 30000-39999."""
    return free_broker_port()


def free_broker_port(nodes: int = 1) -> int:
    """A port N such that N..N+nodes-1 (kafka-local's client ports) and N+1000..N+999+nodes (its
    controller ports) are all free, within 30000-39999."""
    for _ in range(200):
        port = random.randint(30000, 38999 - nodes)
        try:
            with contextlib.ExitStack() as stack:
                for offset in [*range(nodes), *range(1000, 1000 + nodes)]:
                    sock = stack.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", port + offset))
        except OSError:
            continue
        return port
    raise RuntimeError("no free ports for a private broker")
