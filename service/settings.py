"""Configuration from environment variables, checked once at startup.

Each setting is declared once, below, with its variable, its default and its
parser; `Settings.from_env` reads them all. An unset variable takes its default;
a set one must parse, and a set but empty one is malformed. A missing or malformed
setting is a ConfigurationError whose message names the variable and never its value.

A secret setting (one whose parsed value is a `Secret`) may instead be read from a
file named by `NAME_FILE`, which is how Docker and Kubernetes mount secrets. Keys
without a default are required only by the commands that use them: an audit host
needs no master key (`from_env(require=...)`).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import logging
import os
import re
import ssl
import types
import typing
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

from service.crypto import Keyring
from service.db.url import DatabaseURL
from service.events.kafka import PROTOCOLS, SASL_MECHANISMS, KafkaConnection

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


class _NotSet(Secret[Any]):
    """A key this command did not ask for: revealing it is the missing-setting error, raised late."""

    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        super().__init__(None)
        self._name = name

    def reveal(self) -> Any:
        raise ConfigurationError(f"{self._name} is required (or {self._name}_FILE; see config/example.env)")

    def __repr__(self) -> str:
        return "Secret(<not set>)"


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
    """One of `choices`, whatever the case it is written in (they are all upper or all lower case)."""

    def parse(raw: str) -> str:
        value = raw.strip().upper() if choices[0].isupper() else raw.strip().lower()
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


def _secret_text(raw: str) -> Secret[str]:
    return Secret(_text(raw))


def _readable_file(raw: str) -> str:
    """A path to a file this process can read (the message never quotes it: a key may be pasted here)."""
    path = raw.strip()
    if path.startswith("-----BEGIN") or "\n" in path:
        raise ValueError("must be the path of a PEM file, not its contents")
    try:
        with open(path, "rb") as file:
            file.read(1)
    except FileNotFoundError:
        raise ValueError("names a file that does not exist") from None
    except IsADirectoryError:
        raise ValueError("names a directory, not a file") from None
    except PermissionError:
        raise ValueError("names a file this process may not read") from None
    except OSError as exc:
        raise ValueError(f"names a file that cannot be read ({type(exc).__name__})") from None
    return path


def _ca_file(raw: str) -> str:
    path = _readable_file(raw)
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=path)
    except (ssl.SSLError, ValueError):
        raise ValueError("holds no PEM CA certificate") from None
    return path


def _port(raw: str) -> int:
    port = _at_least(1, int)(raw)
    if port > 65535:
        raise ValueError("must be a port number, 1-65535")
    return int(port)


_CPU_RANGE = re.compile(r"([0-9]{1,4})(?:-([0-9]{1,4}))?")


def _cpu_list(raw: str) -> frozenset[int]:
    """A Linux CPU list, as taskset -c and cpuset take it: 0, 0,2 or 2-3,6, each CPU of this machine."""
    cpus: set[int] = set()
    for part in raw.split(","):
        found = _CPU_RANGE.fullmatch(part.strip())
        if found is None:
            raise ValueError("must be a CPU list such as 0, 0,2 or 2-3,6")
        first = int(found.group(1))
        last = int(found.group(2) or first)
        if last < first:
            raise ValueError("must be a CPU list whose ranges go upwards, such as 2-3")
        cpus.update(range(first, last + 1))
    count = os.cpu_count() or 1
    if max(cpus) >= count:
        raise ValueError(f"must name CPUs of this machine, 0 to {count - 1}")
    return frozenset(cpus)


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@dataclass(frozen=True)
class Settings:
    master_keys: Secret[str] = _setting("SECRETS_MASTER_KEYS", parse=_master_keys)
    api_key_hash_key: Secret[bytes] = _setting("API_KEY_HASH_KEY", parse=_hash_key)
    database_url: str = _setting("DATABASE_URL", "sqlite:///./data/secrets.db", _database_url)
    # PostgreSQL's password kept out of DATABASE_URL (so that it can come from DATABASE_PASSWORD_FILE).
    database_password: Secret[str] | None = _setting("DATABASE_PASSWORD", None, _secret_text)
    host: str = _setting("HOST", "127.0.0.1", _text)
    port: int = _setting("PORT", 8000, _port)
    kafka_bootstrap_servers: str = _setting("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092", _bootstrap_servers)
    kafka_topic: str = _setting("KAFKA_TOPIC", "secret-events", _text)
    kafka_topic_partitions: int = _setting("KAFKA_TOPIC_PARTITIONS", 6, _at_least(1, int))
    kafka_replication_factor: int = _setting("KAFKA_REPLICATION_FACTOR", 1, _at_least(1, int))
    kafka_timeout_seconds: float = _setting("KAFKA_TIMEOUT_SECONDS", 10.0, _at_least(0.001, float))
    kafka_security_protocol: str = _setting("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT", _one_of(*PROTOCOLS))
    kafka_sasl_mechanism: str | None = _setting("KAFKA_SASL_MECHANISM", None, _one_of(*SASL_MECHANISMS))
    kafka_sasl_username: str | None = _setting("KAFKA_SASL_USERNAME", None, _text)
    # A secret: may come from KAFKA_SASL_PASSWORD_FILE.
    kafka_sasl_password: Secret[str] | None = _setting("KAFKA_SASL_PASSWORD", None, _secret_text)
    kafka_ssl_cafile: str | None = _setting("KAFKA_SSL_CAFILE", None, _ca_file)
    kafka_ssl_certfile: str | None = _setting("KAFKA_SSL_CERTFILE", None, _readable_file)
    kafka_ssl_keyfile: str | None = _setting("KAFKA_SSL_KEYFILE", None, _readable_file)
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
    # text (a terminal's) or json (one object per line, for a log collector).
    log_format: str = _setting("LOG_FORMAT", "text", _one_of("text", "json"))
    # What a connection may hold before it is authenticated (see service/http/server.py).
    http_max_head_bytes: int = _setting("HTTP_MAX_HEAD_BYTES", 16384, _at_least(1024, int))
    http_head_timeout_seconds: float = _setting("HTTP_HEAD_TIMEOUT_SECONDS", 10.0, _at_least(0.1, float))
    http_body_timeout_seconds: float = _setting("HTTP_BODY_TIMEOUT_SECONDS", 10.0, _at_least(0.1, float))
    http_keepalive_seconds: int = _setting("HTTP_KEEPALIVE_SECONDS", 5, _at_least(1, int))
    http_max_concurrency: int = _setting("HTTP_MAX_CONCURRENCY", 1024, _at_least(1, int))
    # Per API key and per replica: requests, and value reads apart (0 per second: no limit).
    rate_limit_per_second: float = _setting("RATE_LIMIT_PER_SECOND", 100.0, _at_least(0.0, float))
    rate_limit_burst: int = _setting("RATE_LIMIT_BURST", 200, _at_least(1, int))
    rate_limit_reads_per_second: float = _setting("RATE_LIMIT_READS_PER_SECOND", 50.0, _at_least(0.0, float))
    rate_limit_reads_burst: int = _setting("RATE_LIMIT_READS_BURST", 500, _at_least(1, int))
    # inprocess: serve runs the outbox relay in its own event loop; separate: in a child process of its
    # own (`serve --relay` overrides it).
    relay_mode: str = _setting("RELAY_MODE", "inprocess", _one_of("inprocess", "separate"))
    # The relay process's /metrics (separate mode, or `secrets-service relay`): unset, none.
    relay_metrics_port: int | None = _setting("RELAY_METRICS_PORT", None, _port)
    # The CPUs `serve` runs on (with its threads, and a separate relay unless RELAY_CPUS says
    # otherwise), and those a relay process runs on: unset, wherever the process was started.
    serve_cpus: frozenset[int] | None = _setting("SERVE_CPUS", None, _cpu_list)
    relay_cpus: frozenset[int] | None = _setting("RELAY_CPUS", None, _cpu_list)
    # GET /metrics is on the service's port unless METRICS_PORT names a port of its own (then only there).
    metrics_port: int | None = _setting("METRICS_PORT", None, _port)
    metrics_host: str = _setting("METRICS_HOST", "127.0.0.1", _text)
    # How long a SIGTERM'd process answers /readyz 503 before it stops accepting connections.
    shutdown_drain_seconds: float = _setting("SHUTDOWN_DRAIN_SECONDS", 2.0, _at_least(0.0, float))

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, *, require: Collection[str] | None = None
    ) -> Settings:
        """Every setting from `env` (default: the process environment).

        `require` names the settings without a default that the caller needs (None: all of
        them); one it does not name may stay unset, and fails only if it is used.
        """
        env = os.environ if env is None else env
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            name = field.metadata["env"]
            secret = _holds_secret(hints[field.name])
            raw = _read(env, name, secret)
            if raw is None:
                if field.default is dataclasses.MISSING:
                    if secret and require is not None and name not in require:
                        values[field.name] = _NotSet(name)
                        continue
                    also = f" (or {name}_FILE)" if secret else ""
                    raise ConfigurationError(f"{name} is required{also}; see config/example.env")
                continue
            try:
                values[field.name] = field.metadata["parse"](raw)
            except ValueError as exc:
                raise ConfigurationError(f"{name} {exc}") from None
        settings = cls(**values)
        settings.database  # noqa: B018 -- DATABASE_URL and DATABASE_PASSWORD must agree
        return settings

    def __post_init__(self) -> None:
        _check_kafka_security(self)

    @property
    def database(self) -> DatabaseURL:
        url = DatabaseURL.parse(self.database_url)
        if self.database_password is None:
            return url
        parts = urlsplit(url.url)
        if url.dialect != "postgresql":
            raise ConfigurationError("DATABASE_PASSWORD applies to a postgresql DATABASE_URL only")
        if parts.password is not None:
            raise ConfigurationError("DATABASE_PASSWORD is set and DATABASE_URL has a password too: keep one")
        user, at, host = parts.netloc.rpartition("@")
        if not at or not user:
            raise ConfigurationError("DATABASE_PASSWORD needs a user name in DATABASE_URL (user@host)")
        password = quote(self.database_password.reveal(), safe="")
        netloc = f"{user}:{password}@{host}"
        return DatabaseURL(urlunsplit(parts._replace(netloc=netloc)), url.dialect)

    @property
    def kafka(self) -> KafkaConnection:
        password = self.kafka_sasl_password
        return KafkaConnection(
            bootstrap_servers=self.kafka_bootstrap_servers,
            timeout_seconds=self.kafka_timeout_seconds,
            security_protocol=self.kafka_security_protocol,
            sasl_mechanism=self.kafka_sasl_mechanism,
            sasl_username=self.kafka_sasl_username,
            sasl_password=None if password is None else password.reveal(),
            ssl_cafile=self.kafka_ssl_cafile,
            ssl_certfile=self.kafka_ssl_certfile,
            ssl_keyfile=self.kafka_ssl_keyfile,
        )

    @property
    def logging_level(self) -> int:
        return logging.getLevelNamesMapping()[self.log_level]


def _check_kafka_security(settings: Settings) -> None:
    """The Kafka settings that only make sense together; each message names the variable to fix."""
    protocol = settings.kafka_security_protocol
    sasl = {
        "KAFKA_SASL_MECHANISM": settings.kafka_sasl_mechanism,
        "KAFKA_SASL_USERNAME": settings.kafka_sasl_username,
        "KAFKA_SASL_PASSWORD": settings.kafka_sasl_password,
    }
    tls = {
        "KAFKA_SSL_CAFILE": settings.kafka_ssl_cafile,
        "KAFKA_SSL_CERTFILE": settings.kafka_ssl_certfile,
        "KAFKA_SSL_KEYFILE": settings.kafka_ssl_keyfile,
    }
    for name, value in sasl.items():
        if protocol.startswith("SASL_") and value is None:
            raise ConfigurationError(f"{name} is required when KAFKA_SECURITY_PROTOCOL is {protocol}")
        if not protocol.startswith("SASL_") and value is not None:
            raise ConfigurationError(
                f"{name} is set but KAFKA_SECURITY_PROTOCOL is {protocol}: use SASL_SSL (or SASL_PLAINTEXT)"
            )
    for name, value in tls.items():
        if protocol not in ("SSL", "SASL_SSL") and value is not None:
            raise ConfigurationError(
                f"{name} is set but KAFKA_SECURITY_PROTOCOL is {protocol}: use SSL or SASL_SSL"
            )
    certfile, keyfile = settings.kafka_ssl_certfile, settings.kafka_ssl_keyfile
    if (certfile is None) != (keyfile is None):
        missing = "KAFKA_SSL_KEYFILE" if keyfile is None else "KAFKA_SSL_CERTFILE"
        raise ConfigurationError(f"{missing} is required for mutual TLS (set both or neither)")
    if certfile is not None and keyfile is not None:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(certfile, keyfile, password=_no_password)
        except (ssl.SSLError, ValueError, OSError):
            raise ConfigurationError(
                "KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE are not a PEM certificate and its unencrypted key"
            ) from None


def _no_password() -> str:
    """An encrypted key fails to load instead of prompting on the terminal."""
    raise ValueError("encrypted key")


def _holds_secret(hint: Any) -> bool:
    """Whether a field's type is a Secret (or an optional one)."""
    if hint is Secret or typing.get_origin(hint) is Secret:
        return True
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_holds_secret(arg) for arg in typing.get_args(hint))
    return False


def _read(env: Mapping[str, str], name: str, secret: bool) -> str | None:
    """The raw text of a setting, from NAME or (secret settings only) the file NAME_FILE; None when unset."""
    file_name = name + "_FILE"
    value, path = env.get(name), env.get(file_name)
    if path is not None and not secret:
        raise ConfigurationError(
            f"{file_name} is not supported: {name} is not a secret setting, set it directly"
        )
    if value is not None and path is not None:
        raise ConfigurationError(f"{name} and {file_name} are both set: keep one")
    if path is not None:
        if not path.strip():
            raise ConfigurationError(f"{file_name} is set but empty (unset it, or name a file)")
        try:
            text = Path(path.strip()).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigurationError(
                f"{file_name} names a file that cannot be read: {path.strip()} ({exc.strerror or type(exc).__name__})"
            ) from None
        except UnicodeDecodeError:
            raise ConfigurationError(f"{file_name} names a file that is not UTF-8 text") from None
        if not text.strip():
            raise ConfigurationError(f"{file_name} names an empty file ({name} would be empty)")
        return text.strip()
    if value is not None and not value.strip():
        raise ConfigurationError(f"{name} is set but empty (unset it to take the default)")
    return value


def read_env_file(path: Path) -> dict[str, str]:
    """`NAME=value` lines (blank lines, `# comments` and a leading `export ` allowed; a value may be quoted).

    Errors name the file and the line number, never the line: it may hold a key.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(
            f"the env file {path} cannot be read ({exc.strerror or type(exc).__name__})"
        ) from None
    except UnicodeDecodeError:
        raise ConfigurationError(f"the env file {path} is not UTF-8 text") from None
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.removeprefix("export ").partition("=")
        name = name.strip()
        if not sep or not _ENV_NAME.fullmatch(name):
            raise ConfigurationError(f"the env file {path}, line {number}: expected NAME=value")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[name] = value
    return values


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
