"""How to reach Kafka, from the same environment variables the service reads.

KAFKA_BOOTSTRAP_SERVERS, KAFKA_TOPIC, KAFKA_TIMEOUT_SECONDS, and the security settings:
KAFKA_SECURITY_PROTOCOL (PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL), KAFKA_SASL_MECHANISM
(PLAIN, SCRAM-SHA-256, SCRAM-SHA-512), KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD,
KAFKA_SSL_CAFILE, KAFKA_SSL_CERTFILE, KAFKA_SSL_KEYFILE. As for the service, the password
can come from the file named by KAFKA_SASL_PASSWORD_FILE instead. An error names the
variable, never its value; the password is never in a repr.
"""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
_HOST_PORT = re.compile(r"[A-Za-z0-9_.\-\[\]:]+:[0-9]{1,5}")


class KafkaSettingsError(ValueError):
    """A Kafka setting is missing, malformed or inconsistent; the message names the variable, never its value."""


def secret_setting(env: Mapping[str, str], name: str) -> str | None:
    """A secret setting from NAME, or from the file named by NAME_FILE (as Docker and Kubernetes mount
    secrets; surrounding whitespace dropped), as the service reads its own; None when neither is set."""
    file_name = name + "_FILE"
    value, path = env.get(name) or None, (env.get(file_name) or "").strip() or None
    if value is not None and path is not None:
        raise KafkaSettingsError(f"{name} and {file_name} are both set: keep one")
    if path is None:
        return value
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise KafkaSettingsError(
            f"{file_name} names a file that cannot be read ({type(exc).__name__})"
        ) from None
    if not text:
        raise KafkaSettingsError(f"{file_name} names an empty file")
    return text


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap_servers: str = "127.0.0.1:9092"
    topic: str = "secret-events"
    timeout_seconds: float = 10.0
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> KafkaSettings:
        """The settings from the environment (the service's variable names), checked."""
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            raw = env.get(name, "").strip()
            return raw or None

        servers = get("KAFKA_BOOTSTRAP_SERVERS") or cls.bootstrap_servers
        servers = ",".join(s.strip() for s in servers.split(","))
        if not all(_HOST_PORT.fullmatch(s) for s in servers.split(",")):
            raise KafkaSettingsError("KAFKA_BOOTSTRAP_SERVERS must be a comma-separated list of host:port")
        timeout = get("KAFKA_TIMEOUT_SECONDS")
        try:
            timeout_seconds = cls.timeout_seconds if timeout is None else float(timeout)
        except ValueError:
            raise KafkaSettingsError("KAFKA_TIMEOUT_SECONDS must be a number") from None
        if not timeout_seconds > 0:
            raise KafkaSettingsError("KAFKA_TIMEOUT_SECONDS must be positive")
        protocol = (get("KAFKA_SECURITY_PROTOCOL") or "PLAINTEXT").upper()
        if protocol not in PROTOCOLS:
            raise KafkaSettingsError(f"KAFKA_SECURITY_PROTOCOL must be one of {', '.join(PROTOCOLS)}")
        mechanism = get("KAFKA_SASL_MECHANISM")
        if mechanism is not None:
            mechanism = mechanism.upper()
            if mechanism not in SASL_MECHANISMS:
                raise KafkaSettingsError(f"KAFKA_SASL_MECHANISM must be one of {', '.join(SASL_MECHANISMS)}")
        settings = cls(
            bootstrap_servers=servers,
            topic=get("KAFKA_TOPIC") or cls.topic,
            timeout_seconds=timeout_seconds,
            security_protocol=protocol,
            sasl_mechanism=mechanism,
            sasl_username=get("KAFKA_SASL_USERNAME"),
            # A password is taken as it is: spaces may be part of it.
            sasl_password=secret_setting(env, "KAFKA_SASL_PASSWORD"),
            ssl_cafile=_readable("KAFKA_SSL_CAFILE", get("KAFKA_SSL_CAFILE")),
            ssl_certfile=_readable("KAFKA_SSL_CERTFILE", get("KAFKA_SSL_CERTFILE")),
            ssl_keyfile=_readable("KAFKA_SSL_KEYFILE", get("KAFKA_SSL_KEYFILE")),
        )
        settings.check()
        return settings

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    def check(self) -> None:
        """The settings that only make sense together; each message names the variable to fix."""
        protocol = self.security_protocol
        sasl = {
            "KAFKA_SASL_MECHANISM": self.sasl_mechanism,
            "KAFKA_SASL_USERNAME": self.sasl_username,
            "KAFKA_SASL_PASSWORD": self.sasl_password,
        }
        for name, value in sasl.items():
            if self.uses_sasl and value is None:
                raise KafkaSettingsError(f"{name} is required when KAFKA_SECURITY_PROTOCOL is {protocol}")
            if not self.uses_sasl and value is not None:
                raise KafkaSettingsError(
                    f"{name} is set but KAFKA_SECURITY_PROTOCOL is {protocol}: use SASL_SSL (or SASL_PLAINTEXT)"
                )
        tls = {
            "KAFKA_SSL_CAFILE": self.ssl_cafile,
            "KAFKA_SSL_CERTFILE": self.ssl_certfile,
            "KAFKA_SSL_KEYFILE": self.ssl_keyfile,
        }
        for name, value in tls.items():
            if not self.uses_tls and value is not None:
                raise KafkaSettingsError(
                    f"{name} is set but KAFKA_SECURITY_PROTOCOL is {protocol}: use SSL or SASL_SSL"
                )
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            missing = "KAFKA_SSL_KEYFILE" if self.ssl_keyfile is None else "KAFKA_SSL_CERTFILE"
            raise KafkaSettingsError(f"{missing} is required for mutual TLS (set both or neither)")

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for an aiokafka client (a fresh TLS context each time: replaced files are read)."""
        options: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "request_timeout_ms": max(30000, int(self.timeout_seconds * 1000)),
            "security_protocol": self.security_protocol,
        }
        if self.uses_tls:
            from aiokafka.helpers import create_ssl_context

            try:
                options["ssl_context"] = create_ssl_context(
                    cafile=self.ssl_cafile, certfile=self.ssl_certfile, keyfile=self.ssl_keyfile
                )
            except (ssl.SSLError, OSError) as exc:
                raise KafkaSettingsError(
                    f"KAFKA_SSL_CAFILE, KAFKA_SSL_CERTFILE or KAFKA_SSL_KEYFILE cannot be loaded ({type(exc).__name__})"
                ) from None
        if self.uses_sasl:
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.sasl_username
            options["sasl_plain_password"] = self.sasl_password
        return options

    @property
    def for_logs(self) -> str:
        """Where and as whom, for a log line: never the password."""
        how = self.security_protocol
        if self.uses_sasl:
            how += f", {self.sasl_mechanism} as {self.sasl_username}"
        return f"{self.bootstrap_servers} ({how})"


def _readable(name: str, path: str | None) -> str | None:
    """A path this process can read (the message never quotes it: a key may have been pasted instead)."""
    if path is None:
        return None
    if path.startswith("-----BEGIN") or "\n" in path:
        raise KafkaSettingsError(f"{name} must be the path of a PEM file, not its contents")
    try:
        with open(path, "rb") as file:
            file.read(1)
    except OSError as exc:
        raise KafkaSettingsError(f"{name} names a file that cannot be read ({type(exc).__name__})") from None
    return path
