"""The operator's command line: serve, migrate, projects, keys, audit-consume."""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gc
import json
import logging
import os
import sys
from pathlib import Path

import uvicorn

from service import logs
from service.accounts.model import SCOPES
from service.clock import SystemClock
from service.errors import ServiceError
from service.settings import ConfigurationError, Settings, read_env_file

# The keys each command needs, by variable; a command not listed here needs every one.
# An audit host, or an operator revoking a key, never has to hold the master keys.
_KEYS_NEEDED: dict[tuple[str, str | None], tuple[str, ...]] = {
    ("migrate", None): (),
    ("projects", "create"): ("API_KEY_HASH_KEY",),
    ("keys", "issue"): ("API_KEY_HASH_KEY",),
    ("keys", "list"): (),
    ("keys", "revoke"): (),
    ("keys", "rewrap"): ("SECRETS_MASTER_KEYS",),
    ("keys", "status"): ("SECRETS_MASTER_KEYS",),
    ("audit-consume", None): (),
    ("relay", None): (),
}
# Commands that run until stopped log at LOG_LEVEL; the others keep stderr for errors unless --verbose.
_LONG_RUNNING = {"serve", "audit-consume", "relay"}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="secrets-service", description=__doc__)
    parser.add_argument(
        "--env-file",
        type=Path,
        default=None,
        help="read settings from this NAME=value file too (default: $SECRETS_ENV_FILE); "
        "variables already in the environment win",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="one-shot commands: log at LOG_LEVEL on stderr"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP service (applies pending migrations first)")
    serve.add_argument("--host", default=None, help="default: $HOST, else 127.0.0.1")
    serve.add_argument("--port", type=int, default=None, help="default: $PORT, else 8000")
    serve.add_argument("--graceful-shutdown-seconds", type=float, default=10.0)
    serve.add_argument(
        "--relay",
        choices=("inprocess", "separate"),
        default=None,
        help="where the outbox relay runs: in this process, or in a child process of its own "
        "(default: $RELAY_MODE, else inprocess)",
    )

    relay = commands.add_parser(
        "relay", help="run the outbox relay alone (serve --relay=separate starts one)"
    )
    relay.add_argument(
        "--wake-stdin",
        action="store_true",
        help="woken through stdin by the process that started it; stop at EOF",
    )

    commands.add_parser("migrate", help="apply pending database migrations")

    projects = commands.add_parser("projects", help="manage projects").add_subparsers(
        dest="action", required=True
    )
    create_project = projects.add_parser(
        "create", help="create a project and its first API key (printed once)"
    )
    create_project.add_argument("name", help="a label for people; not empty")

    keys = commands.add_parser("keys", help="master keys and API keys").add_subparsers(
        dest="action", required=True
    )
    generate = keys.add_parser("generate", help="print a new SECRETS_MASTER_KEYS entry")
    generate.add_argument("--key-id", default=None)
    generate.add_argument("--hash-key", action="store_true", help="print a new API_KEY_HASH_KEY instead")
    issue = keys.add_parser("issue", help="issue another API key for a project (printed once)")
    issue.add_argument("project_id")
    issue.add_argument(
        "--scope",
        dest="scopes",
        action="append",
        choices=SCOPES,
        help="a scope the key holds (repeatable; default: every scope). secrets:view lists and reads "
        "metadata, secrets:read adds value reads, secrets:manage is everything",
    )
    listing = keys.add_parser("list", help="list a project's API keys and their scopes (never the keys)")
    listing.add_argument("project_id")
    keys.add_parser(
        "rewrap", help="re-wrap every value's data key (every kept version's) under the first master key"
    )
    keys.add_parser("status", help="how many stored values each master key id wraps")
    revoke = keys.add_parser("revoke", help="revoke an API key by its id")
    revoke.add_argument("api_key_id")

    audit = commands.add_parser("audit-consume", help="append secret events from Kafka to an audit log")
    audit.add_argument("--output", type=Path, default=Path("data/audit.jsonl"))
    audit.add_argument("--group", default="secrets-audit")
    audit.add_argument("--idle-exit-seconds", type=float, default=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "keys" and args.action == "generate":
        return _generate_key(parser, args)
    try:
        settings = _settings(args)
        level = settings.logging_level if args.command in _LONG_RUNNING or args.verbose else logging.WARNING
        logs.configure(level, json_lines=settings.log_format == "json")
        return _run(settings, args)
    except ConfigurationError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except ServiceError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1


def _settings(args: argparse.Namespace) -> Settings:
    """The settings from the environment, over those of the env file; only the keys this command needs."""
    env: dict[str, str] = dict(os.environ)
    env_file = args.env_file
    if env_file is None and "SECRETS_ENV_FILE" in env:
        if not env["SECRETS_ENV_FILE"].strip():
            raise ConfigurationError("SECRETS_ENV_FILE is set but empty (unset it, or name a file)")
        env_file = Path(env["SECRETS_ENV_FILE"].strip())
    if env_file is not None:
        env = {**read_env_file(env_file), **env}
    needed = _KEYS_NEEDED.get((args.command, getattr(args, "action", None)))
    return Settings.from_env(env, require=needed)


def _run(settings: Settings, args: argparse.Namespace) -> int:
    if args.command == "serve":
        _pin(settings.serve_cpus, "SERVE_CPUS")
        # A database that refuses us (its TLS included) is one clear line here, not uvicorn's traceback.
        asyncio.run(_check_database(settings))
        return _serve(settings, args)
    if args.command == "audit-consume":
        return _audit_consume(settings, args)
    if args.command == "relay":
        _pin(settings.relay_cpus, "RELAY_CPUS")
        import uvloop

        from service.app import run_relay

        # uvloop, as serve's: the relay's rounds are many small callbacks (a read, a produce
        # request and its answer, a wake-up), each cheaper there (bench/relay_cpu.py: ~6% less CPU
        # per event).
        return uvloop.run(run_relay(settings, wake_from_stdin=args.wake_stdin))
    return asyncio.run(_admin(settings, args))


def _pin(cpus: frozenset[int] | None, name: str) -> None:
    """Keep this process, and every thread and process it starts, on `cpus`. Its event loop and its
    database threads hand work to each other on every request: on one CPU that costs less than
    across several (README, "Durability and speed")."""
    if cpus is None:
        return
    try:
        os.sched_setaffinity(0, cpus)
    except OSError as exc:
        raise ConfigurationError(f"{name} names CPUs this process may not run on ({exc.strerror})") from None


def _audit_consume(settings: Settings, args: argparse.Namespace) -> int:
    from aiokafka.errors import KafkaError

    from service.events.audit import consume
    from service.events.faults import KafkaFailure

    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(
                consume(settings.kafka, settings.kafka_topic, args.output, args.group, args.idle_exit_seconds)
            )
    except KafkaFailure as exc:
        # It could not join: the cause, named (a refused password, an untrusted CA, no broker there, ...).
        print(f"error: audit-consume cannot read from Kafka: {exc}", file=sys.stderr)
        return 1
    except (KafkaError, OSError, TimeoutError) as exc:
        print(
            f"error: cannot consume {settings.kafka_topic} from {settings.kafka_bootstrap_servers}"
            f" ({type(exc).__name__}); check KAFKA_BOOTSTRAP_SERVERS, and that KAFKA_TOPIC exists",
            file=sys.stderr,
        )
        return 1
    return 0


def _generate_key(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from service.crypto import generate_master_key_entry

    if args.hash_key:
        print(base64.b64encode(os.urandom(32)).decode())
        return 0
    try:
        print(generate_master_key_entry(args.key_id or datetime.now(UTC).strftime("k%Y%m%d%H%M%S")))
    except ValueError as exc:
        parser.error(f"--key-id: {exc}")
    return 0


async def _admin(settings: Settings, args: argparse.Namespace) -> int:
    """The commands that act on the database: each opens it, migrates it, and closes it."""
    from service.accounts import admin
    from service.crypto import Keyring
    from service.db.dialect import open_store
    from service.secrets.rotation import key_status, rewrap_all

    if args.command == "migrate":
        print(json.dumps({"applied": await _migrate(settings)}))
        return 0
    clock = SystemClock()
    if args.command == "projects":
        admin.project_name(args.name)  # refused before the database is touched
    async with open_store(settings.database, settings.sqlite_synchronous) as store:
        if args.command == "projects":
            hash_key = settings.api_key_hash_key.reveal()
            print(json.dumps((await admin.create_project(store, hash_key, clock, args.name)).to_json()))
            return 0
        if args.action == "issue":
            hash_key = settings.api_key_hash_key.reveal()
            scopes = args.scopes or SCOPES
            print(
                json.dumps(
                    (await admin.issue_api_key(store, hash_key, clock, args.project_id, scopes)).to_json()
                )
            )
            return 0
        if args.action == "list":
            print(json.dumps([key.to_json() for key in await admin.list_api_keys(store, args.project_id)]))
            return 0
        if args.action == "rewrap":
            keyring = Keyring.parse(settings.master_keys.reveal())
            done = await rewrap_all(store, keyring)
            result = {
                "rewrapped": done.rewrapped,
                "primaryKeyId": keyring.primary_id,
                "remaining": done.remaining,
            }
            print(json.dumps(result))
            return 0 if not done.remaining else 3
        if args.action == "status":
            keyring = Keyring.parse(settings.master_keys.reveal())
            print(json.dumps({"primaryKeyId": keyring.primary_id, "valuesPerKeyId": await key_status(store)}))
            return 0
        revoked = await admin.revoke_api_key(store, clock, args.api_key_id)
        print(json.dumps({"apiKeyId": args.api_key_id, "revoked": revoked}))
        return 0 if revoked else 1


async def _check_database(settings: Settings) -> None:
    """Open and close the database once; one that cannot be reached or refuses us raises ServiceError."""
    from service.db.dialect import open_database

    database = open_database(settings.database, settings.sqlite_synchronous)
    await database.open()
    await database.close()


async def _migrate(settings: Settings) -> int:
    from service.db.dialect import open_database
    from service.db.migrations import migrate

    database = open_database(settings.database, settings.sqlite_synchronous)
    await database.open()
    try:
        return await migrate(database)
    finally:
        await database.close()


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    from service.app import create_app
    from service.http.server import ConnectionLimits, Lifecycle, Server, protocol

    lifecycle = Lifecycle()
    limits = ConnectionLimits(
        max_head_bytes=settings.http_max_head_bytes,
        head_timeout=settings.http_head_timeout_seconds,
        body_timeout=settings.http_body_timeout_seconds,
    )
    relay_command = None
    if (args.relay or settings.relay_mode) == "separate":
        env_file = ["--env-file", str(args.env_file)] if args.env_file is not None else []
        relay_command = [sys.executable, "-m", "service.cli", *env_file, "relay", "--wake-stdin"]
    config = uvicorn.Config(
        create_app(settings, lifecycle=lifecycle, relay_command=relay_command),
        host=args.host or settings.host,
        port=settings.port if args.port is None else args.port,
        loop="uvloop",
        http=protocol(limits),
        lifespan="on",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=args.graceful_shutdown_seconds,
        timeout_keep_alive=settings.http_keepalive_seconds,
        limit_concurrency=settings.http_max_concurrency,
        server_header=False,
    )
    # Startup objects never die: keep them out of every collection, and collect young objects
    # less often (measured: ~8% more creates/s under load).
    gc.freeze()
    gc.set_threshold(20_000, 50, 50)
    # The SQLite connection threads need the GIL back after every statement and fsync; by default the
    # busy event loop keeps it for up to 5 ms each time, which stretched a batch's commit ~5x.
    sys.setswitchinterval(0.0002)
    server = Server(config, lifecycle, settings.shutdown_drain_seconds)
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
