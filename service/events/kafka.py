"""How to reach Kafka: the options every client of the cluster (producer, consumer, admin) shares."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class KafkaConnection:
    bootstrap_servers: str
    timeout_seconds: float = 10.0

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for any aiokafka client."""
        return {
            "bootstrap_servers": self.bootstrap_servers,
            "request_timeout_ms": int(self.timeout_seconds * 1000),
        }

    def consumer_options(self) -> dict[str, Any]:
        """Keyword arguments for a consumer in a group: a group join can take longer than a request."""
        return {**self.client_options(), "request_timeout_ms": max(30000, int(self.timeout_seconds * 1000))}
