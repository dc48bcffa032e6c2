"""The application factory and the lifespan that owns every resource."""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypedDict

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware

from service import errors
from service.auth import Authenticator
from service.crypto import Keyring
from service.middleware import EdgeMiddleware
from service.migrations import migrate
from service.outbox import EventPublisher, OutboxRelay, RelayLease
from service.routes import routes
from service.settings import Settings
from service.store import Store, open_database
from service.vault import Vault

logger = logging.getLogger("service")


class State(TypedDict):
    store: Store
    auth: Authenticator
    vault: Vault
    relay: OutboxRelay


def create_app(settings: Settings) -> Starlette:
    keyring = Keyring.from_setting(settings.master_keys)
    hash_key = base64.b64decode(settings.api_key_hash_key.reveal())

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[State]:
        database = open_database(settings.database_url)
        await database.connect()
        try:
            applied = await migrate(database)
            logger.info("database %s ready (%d migrations applied)", settings.database_url_for_logs, applied)
            relay: OutboxRelay | None = None
            store = Store(database, settings.sqlite_synchronous, lambda: relay.wake() if relay else None)
            relay = OutboxRelay(settings, store, EventPublisher(settings), RelayLease(database))
            await store.start()
            relay.start()
            try:
                yield {
                    "store": store,
                    "auth": Authenticator(store, hash_key, settings.auth_cache_seconds),
                    "vault": Vault(store, keyring, hash_key, settings.max_secrets_per_project),
                    "relay": relay,
                }
            finally:
                # Requests have drained: the relay gets its bounded flush, then queued writes commit.
                await relay.stop()
                await store.stop()
        finally:
            await database.disconnect()

    return Starlette(
        routes=routes,
        middleware=[
            Middleware(EdgeMiddleware, max_body_bytes=settings.max_body_bytes),
        ],
        exception_handlers={
            errors.ServiceError: errors.service_error,
            HTTPException: errors.http_error,
        },
        lifespan=lifespan,
    )
