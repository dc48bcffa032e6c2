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
    """A free port for a server a test starts (PostgreSQL), below the ephemeral range (see above)."""
    return free_broker_port()


def free_broker_port(nodes: int = 1) -> int:
    """A port N such that N..N+nodes-1 (kafka-local's client ports) and N+1000..N+999+nodes (its
    controller ports) are all free, all within 30000-32767: below the kernel's ephemeral range
    (32768-60999), so that no outgoing connection can take a port while a test restarts its broker."""
    for _ in range(200):
        port = random.randint(30000, 31767 - nodes)
        try:
            with contextlib.ExitStack() as stack:
                for offset in [*range(nodes), *range(1000, 1000 + nodes)]:
                    sock = stack.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", port + offset))
        except OSError:
            continue
        return port
    raise RuntimeError("no free ports for a private broker")
