"""How to reach Kafka: the options every client of the cluster (producer, consumer, admin) shares."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiokafka.helpers import create_ssl_context

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True)
class KafkaConnection:
    """Where the brokers are and how to authenticate to them; its repr never shows the password."""

    bootstrap_servers: str
    timeout_seconds: float = 10.0
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for any aiokafka client (the TLS context is built anew each time, so a
        replaced CA or certificate file is read on the next connection attempt)."""
        options: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "request_timeout_ms": int(self.timeout_seconds * 1000),
            "security_protocol": self.security_protocol,
        }
        if self.uses_tls:
            options["ssl_context"] = create_ssl_context(
                cafile=self.ssl_cafile, certfile=self.ssl_certfile, keyfile=self.ssl_keyfile
            )
        if self.uses_sasl:
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.sasl_username
            options["sasl_plain_password"] = self.sasl_password
        return options

    def consumer_options(self) -> dict[str, Any]:
        """Keyword arguments for a consumer in a group: a group join can take longer than a request."""
        return {**self.client_options(), "request_timeout_ms": max(30000, int(self.timeout_seconds * 1000))}

    @property
    def for_logs(self) -> str:
        """Where and as whom, for a log line: never the password."""
        how = self.security_protocol
        if self.uses_sasl:
            how += f", {self.sasl_mechanism} as {self.sasl_username}"
        return f"{self.bootstrap_servers} ({how})"
