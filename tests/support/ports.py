"""Free loopback ports for the processes a test starts."""

from __future__ import annotations

import random
import socket


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_broker_port() -> int:
    """A port N such that N and N + 1000 (kafka-local's controller port) are both free."""
    for _ in range(200):
        port = random.randint(20000, 29999)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1000))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a private broker")
