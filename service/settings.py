"""Configuration from environment variables, checked once at startup."""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from dataclasses import dataclass

from databases import DatabaseURL


class ConfigurationError(Exception):
    """A setting is missing or malformed; the message names the setting, never its value."""


class Secret:
    """A configuration value that must never be printed."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    def __str__(self) -> str:
        return "**********"


DEFAULT_DATABASE_URL = "sqlite:///./data/secrets.db"


@dataclass(frozen=True)
class Settings:
    master_keys: Secret
    api_key_hash_key: Secret
    database_url: str = DEFAULT_DATABASE_URL
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    kafka_topic: str = "secret-events"
    kafka_topic_partitions: int = 6
    kafka_replication_factor: int = 1
    kafka_timeout_seconds: float = 10.0
    event_source: str = "secrets-service"
    sqlite_synchronous: str = "FULL"
    max_body_bytes: int = 262144
    max_secrets_per_project: int = 10000
    auth_cache_seconds: float = 1.0
    outbox_poll_seconds: float = 0.5
    outbox_retention_seconds: float = 7 * 24 * 3600
    relay_shutdown_seconds: float = 5.0
    log_level: str = "INFO"

    @property
    def database_url_for_logs(self) -> str:
        return DatabaseURL(self.database_url).obscure_password

    @property
    def is_sqlite(self) -> bool:
        return DatabaseURL(self.database_url).dialect == "sqlite"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        master_keys = _required(env, "SECRETS_MASTER_KEYS")
        hash_key = _required(env, "API_KEY_HASH_KEY")
        _check_base64_key(hash_key, "API_KEY_HASH_KEY")
        database_url = env.get("DATABASE_URL", DEFAULT_DATABASE_URL)
        if DatabaseURL(database_url).dialect not in ("sqlite", "postgresql"):
            raise ConfigurationError("DATABASE_URL must be a sqlite:// or postgresql+asyncpg:// URL")
        synchronous = env.get("SQLITE_SYNCHRONOUS", "FULL").upper()
        if synchronous not in ("FULL", "NORMAL", "EXTRA"):
            raise ConfigurationError("SQLITE_SYNCHRONOUS must be FULL, EXTRA or NORMAL")
        settings = cls(
            master_keys=Secret(master_keys),
            api_key_hash_key=Secret(hash_key),
            database_url=database_url,
            kafka_bootstrap_servers=env.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
            kafka_topic=env.get("KAFKA_TOPIC", "secret-events"),
            kafka_topic_partitions=_int(env, "KAFKA_TOPIC_PARTITIONS", 6, minimum=1),
            kafka_replication_factor=_int(env, "KAFKA_REPLICATION_FACTOR", 1, minimum=1),
            kafka_timeout_seconds=_float(env, "KAFKA_TIMEOUT_SECONDS", 10.0),
            event_source=env.get("EVENT_SOURCE", "secrets-service"),
            sqlite_synchronous=synchronous,
            max_body_bytes=_int(env, "MAX_BODY_BYTES", 262144, minimum=1024),
            max_secrets_per_project=_int(env, "MAX_SECRETS_PER_PROJECT", 10000, minimum=1),
            auth_cache_seconds=_float(env, "AUTH_CACHE_SECONDS", 1.0, minimum=0.0),
            outbox_poll_seconds=_float(env, "OUTBOX_POLL_SECONDS", 0.5),
            outbox_retention_seconds=_float(env, "OUTBOX_RETENTION_SECONDS", 7 * 24 * 3600.0, minimum=0.0),
            relay_shutdown_seconds=_float(env, "RELAY_SHUTDOWN_SECONDS", 5.0),
            log_level=env.get("LOG_LEVEL", "INFO").upper(),
        )
        # Parse the keyring now so a bad key fails at startup, not on the first request.
        from service.crypto import Keyring

        Keyring.from_setting(settings.master_keys)
        return settings


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise ConfigurationError(f"{name} is required (see config/example.env)")
    return value


def _check_base64_key(value: str, name: str) -> bytes:
    try:
        key = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigurationError(f"{name} must be base64") from None
    if len(key) != 32:
        raise ConfigurationError(f"{name} must decode to 32 bytes")
    return key


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be an integer") from None
    if value < minimum:
        raise ConfigurationError(f"{name} must be at least {minimum}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, minimum: float = 0.001) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be a number") from None
    if not value >= minimum:
        raise ConfigurationError(f"{name} must be at least {minimum}")
    return value
