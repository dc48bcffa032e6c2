"""The application factory, and the lifespan that owns every resource."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypedDict
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server
from starlette.routing import Router
from starlette.types import ASGIApp

from service import metrics
from service.accounts.auth import Authenticator
from service.clock import Clock, SystemClock
from service.crypto import Keyring
from service.db.dialect import open_database
from service.db.lease import lease
from service.db.migrations import MIGRATIONS, migrate, schema_version
from service.db.store import Database, Store
from service.errors import ServiceUnavailable, StorageFull
from service.events.publisher import KafkaPublisher, Publisher
from service.events.relay import RELAY_LOCK, OutboxRelay
from service.events.relay_process import RelayProcess
from service.http.asyncapi import asyncapi_document
from service.http.limits import Limit, RateLimiter
from service.http.middleware import EdgeMiddleware
from service.http.routes import METRICS_ROUTE, routes
from service.http.server import Lifecycle
from service.secrets.retention import IdempotencyRetention
from service.secrets.vault import Vault
from service.settings import Settings

logger = logging.getLogger("service")


class Readiness:
    """Whether this process should get traffic: not draining, the database answers with its
    schema current, and its storage has room (ServiceUnavailable says which is not so)."""

    def __init__(self, store: Store, lifecycle: Lifecycle) -> None:
        self._store = store
        self._lifecycle = lifecycle

    async def check(self) -> None:
        if self._lifecycle.draining:
            raise ServiceUnavailable("The service is shutting down")
        version = await self._store.fetch(schema_version())
        if int(version[0][0]) < len(MIGRATIONS):
            raise ServiceUnavailable("The database schema is not current")
        if self._store.storage_full:
            raise StorageFull()


class State(TypedDict):
    """What routes find on `request.state`."""

    store: Store
    auth: Authenticator
    vault: Vault
    readiness: Readiness
    limits: RateLimiter
    asyncapi: dict[str, Any]


def kafka_publisher(settings: Settings) -> KafkaPublisher:
    return KafkaPublisher(
        settings.kafka,
        settings.kafka_topic,
        source=settings.event_source,
        partitions=settings.kafka_topic_partitions,
        replication_factor=settings.kafka_replication_factor,
    )


def outbox_relay(
    settings: Settings, store: Store, database: Database, clock: Clock, publisher: Publisher | None = None
) -> OutboxRelay:
    return OutboxRelay(
        store,
        publisher or kafka_publisher(settings),
        lease(database, RELAY_LOCK, "relay"),
        clock,
        poll_seconds=settings.outbox_poll_seconds,
        retention_seconds=settings.outbox_retention_seconds,
        shutdown_seconds=settings.relay_shutdown_seconds,
    )


async def run_relay(settings: Settings, *, wake_from_stdin: bool) -> int:
    """The relay alone (`secrets-service relay`), until SIGTERM/SIGINT or, woken through its stdin by
    the API process that started it, until that process goes away (its end of the pipe closes)."""
    clock = SystemClock()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with contextlib.AsyncExitStack() as resources:
        database = open_database(settings.database, settings.sqlite_synchronous)
        await database.open()
        resources.push_async_callback(database.close)
        await migrate(database)
        if settings.relay_metrics_port is not None:
            server, thread = start_http_server(
                settings.relay_metrics_port, settings.metrics_host, registry=metrics.REGISTRY
            )
            resources.callback(_stop_metrics_server, server, thread)
        store = Store(database)
        relay = outbox_relay(settings, store, database, clock)
        await store.start()
        resources.push_async_callback(store.stop)
        await relay.start()
        resources.push_async_callback(relay.stop)
        if wake_from_stdin:

            def readable() -> None:
                if os.read(0, 4096):
                    relay.wake()
                else:
                    loop.remove_reader(0)
                    logger.info("the API process has gone; the relay flushes and stops")
                    stop.set()

            loop.add_reader(0, readable)
            resources.callback(loop.remove_reader, 0)
        logger.info("relay running (process %d)", os.getpid())
        await stop.wait()
    return 0


def create_app(
    settings: Settings,
    *,
    clock: Clock | None = None,
    publisher: Publisher | None = None,
    lifecycle: Lifecycle | None = None,
    relay_command: Sequence[str] | None = None,
) -> ASGIApp:
    """The service. `clock` and `publisher` replace the system clock and Kafka (tests use them);
    `lifecycle` is the server's, which says when the process drains."""
    clock = clock or SystemClock()
    lifecycle = lifecycle or Lifecycle()
    keyring = Keyring.parse(settings.master_keys.reveal())
    hash_key = settings.api_key_hash_key.reveal()
    url = settings.database

    @asynccontextmanager
    async def lifespan(app: ASGIApp) -> AsyncIterator[State]:
        # Each resource's stop is pushed as it starts; they run in reverse on the way out. On
        # shutdown requests have drained: the relay gets its bounded flush, then queued writes commit.
        async with contextlib.AsyncExitStack() as resources:
            database = open_database(url, settings.sqlite_synchronous)
            await database.open()
            resources.push_async_callback(database.close)
            applied = await migrate(database)
            logger.info("database %s ready (%d migrations applied)", url.for_logs, applied)
            if settings.metrics_port is not None:
                server, thread = start_http_server(
                    settings.metrics_port, settings.metrics_host, registry=metrics.REGISTRY
                )
                resources.callback(_stop_metrics_server, server, thread)
                logger.info("metrics on http://%s:%d/metrics", settings.metrics_host, settings.metrics_port)
            relay: OutboxRelay | RelayProcess | None = None
            store = Store(database, lambda: relay.wake() if relay else None)
            if relay_command is None:
                relay = outbox_relay(settings, store, database, clock, publisher)
            else:
                relay = RelayProcess(relay_command, settings.relay_shutdown_seconds)
            retention = IdempotencyRetention(store, clock)
            await store.start()
            resources.push_async_callback(store.stop)
            await relay.start()
            resources.push_async_callback(relay.stop)
            retention.start()
            resources.push_async_callback(retention.stop)
            yield {
                "store": store,
                "readiness": Readiness(store, lifecycle),
                "limits": RateLimiter(
                    clock,
                    {
                        "requests": Limit(settings.rate_limit_per_second, settings.rate_limit_burst),
                        "reads": Limit(settings.rate_limit_reads_per_second, settings.rate_limit_reads_burst),
                    },
                ),
                "auth": Authenticator(store, hash_key, settings.auth_cache_seconds, clock),
                "vault": Vault(
                    store,
                    keyring,
                    hash_key,
                    settings.max_secrets_per_project,
                    clock,
                    versions_kept=settings.secret_versions_kept,
                ),
                "asyncapi": asyncapi_document(settings.kafka_topic, settings.event_source),
            }

    router = Router(
        # /metrics on the service's port, unless it has a port of its own (served by the lifespan).
        routes=routes if settings.metrics_port is not None else [*routes, METRICS_ROUTE],
        # No redirect for a trailing slash: Starlette builds its Location from the Host header, so a
        # client that follows redirects would take its API key and value to any host named there.
        redirect_slashes=False,
        lifespan=lifespan,
    )
    return EdgeMiddleware(router, max_body_bytes=settings.max_body_bytes)


def _stop_metrics_server(server: WSGIServer, thread: threading.Thread) -> None:
    server.shutdown()
    server.server_close()
    thread.join(5)
