"""Configuration from environment variables, checked once at startup.

Each setting is declared once, below, with its variable, its default and its
parser; `Settings.from_env` reads them all. A missing or malformed setting is a
ConfigurationError whose message names the variable and never its value.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from service.crypto import Keyring
from service.db.url import DatabaseURL
from service.events.kafka import KafkaConnection

T = TypeVar("T")


class ConfigurationError(Exception):
    """A setting is missing or malformed; the message names the setting, never its value."""


class Secret(Generic[T]):
    """A configuration value that must never be printed."""

    __slots__ = ("_value",)

    def __init__(self, value: T) -> None:
        self._value = value

    def reveal(self) -> T:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    def __str__(self) -> str:
        return "**********"


Parser = Callable[[str], Any]


def _setting(env: str, default: Any = dataclasses.MISSING, parse: Parser = str.strip) -> Any:
    """A field read from `env`; `parse` raises ValueError with a message that never quotes the value."""
    return dataclasses.field(default=default, metadata={"env": env, "parse": parse})


def _at_least(minimum: float, kind: type[int] | type[float]) -> Parser:
    def parse(raw: str) -> int | float:
        try:
            value = kind(raw)
        except ValueError:
            raise ValueError("must be an integer" if kind is int else "must be a number") from None
        if not value >= minimum:
            raise ValueError(f"must be at least {minimum}")
        return value

    return parse


def _one_of(*choices: str) -> Parser:
    def parse(raw: str) -> str:
        value = raw.strip().upper()
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return value

    return parse


def _master_keys(raw: str) -> Secret[str]:
    Keyring.parse(raw)  # fails now rather than on the first request
    return Secret(raw.strip())


def _hash_key(raw: str) -> Secret[bytes]:
    try:
        key = base64.b64decode(raw.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("must be base64") from None
    if len(key) != 32:
        raise ValueError("must decode to 32 bytes")
    return Secret(key)


def _database_url(raw: str) -> str:
    DatabaseURL.parse(raw.strip())
    return raw.strip()


_HOST_PORT = re.compile(r"[A-Za-z0-9_.\-\[\]:]+:[0-9]{1,5}")


def _bootstrap_servers(raw: str) -> str:
    servers = [server.strip() for server in raw.split(",")]
    if not all(_HOST_PORT.fullmatch(server) for server in servers):
        raise ValueError("must be a comma-separated list of host:port")
    return ",".join(servers)


def _text(raw: str) -> str:
    if not raw.strip():
        raise ValueError("must not be empty")
    return raw.strip()


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@dataclass(frozen=True)
class Settings:
    master_keys: Secret[str] = _setting("SECRETS_MASTER_KEYS", parse=_master_keys)
    api_key_hash_key: Secret[bytes] = _setting("API_KEY_HASH_KEY", parse=_hash_key)
    database_url: str = _setting("DATABASE_URL", "sqlite:///./data/secrets.db", _database_url)
    kafka_bootstrap_servers: str = _setting("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092", _bootstrap_servers)
    kafka_topic: str = _setting("KAFKA_TOPIC", "secret-events", _text)
    kafka_topic_partitions: int = _setting("KAFKA_TOPIC_PARTITIONS", 6, _at_least(1, int))
    kafka_replication_factor: int = _setting("KAFKA_REPLICATION_FACTOR", 1, _at_least(1, int))
    kafka_timeout_seconds: float = _setting("KAFKA_TIMEOUT_SECONDS", 10.0, _at_least(0.001, float))
    event_source: str = _setting("EVENT_SOURCE", "secrets-service", _text)
    sqlite_synchronous: str = _setting("SQLITE_SYNCHRONOUS", "FULL", _one_of("FULL", "EXTRA", "NORMAL"))
    max_body_bytes: int = _setting("MAX_BODY_BYTES", 262144, _at_least(1024, int))
    max_secrets_per_project: int = _setting("MAX_SECRETS_PER_PROJECT", 10000, _at_least(1, int))
    secret_versions_kept: int = _setting("SECRET_VERSIONS_KEPT", 10, _at_least(1, int))
    auth_cache_seconds: float = _setting("AUTH_CACHE_SECONDS", 1.0, _at_least(0.0, float))
    outbox_poll_seconds: float = _setting("OUTBOX_POLL_SECONDS", 0.5, _at_least(0.001, float))
    outbox_retention_seconds: float = _setting(
        "OUTBOX_RETENTION_SECONDS", 7 * 24 * 3600.0, _at_least(0.0, float)
    )
    relay_shutdown_seconds: float = _setting("RELAY_SHUTDOWN_SECONDS", 5.0, _at_least(0.001, float))
    log_level: str = _setting("LOG_LEVEL", "INFO", _one_of(*LOG_LEVELS))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            name = field.metadata["env"]
            raw = env.get(name, "")
            if not raw.strip():
                if field.default is dataclasses.MISSING:
                    raise ConfigurationError(f"{name} is required (see config/example.env)")
                continue
            try:
                values[field.name] = field.metadata["parse"](raw)
            except ValueError as exc:
                raise ConfigurationError(f"{name} {exc}") from None
        return cls(**values)

    @property
    def database(self) -> DatabaseURL:
        return DatabaseURL.parse(self.database_url)

    @property
    def kafka(self) -> KafkaConnection:
        return KafkaConnection(
            bootstrap_servers=self.kafka_bootstrap_servers, timeout_seconds=self.kafka_timeout_seconds
        )

    @property
    def logging_level(self) -> int:
        return logging.getLevelNamesMapping()[self.log_level]
