"""The agent's loop: a full sync, then the events, with a full resync now and then to heal what was missed.

Order matters. The reader takes its position at the end of the topic first, and only
then does a full sync: any change after the sync's list is an event after that
position, so nothing falls between the two. After every (re)connection to Kafka it
does the same again; the second sync reads only what changed in between.

The agent holds, per name, the secret id and version its file has. An event for a
version it already holds (a repeat, or an older one) is ignored; a burst of events
about one secret in one batch costs one read, of the newest version. So each version
is read at most once, whatever the events repeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from secrets_client.agent.files import SecretFiles, valid_name
from secrets_client.client import SecretsClient
from secrets_client.errors import ForbiddenError, GoneError, NotFoundError, SecretsError, UnauthorizedError
from secrets_client.events import AnyEvent, SecretAccessed, SecretDeleted, SecretEvents
from secrets_client.kafka import KafkaSettings
from secrets_client.models import Secret, SecretValue

logger = logging.getLogger("secrets_client.agent")

# Never handed to --on-change: the agent's own credentials.
PRIVATE_ENVIRONMENT = (
    "SECRETS_API_KEY",
    "SECRETS_API_KEY_FILE",
    "KAFKA_SASL_PASSWORD",
    "KAFKA_SASL_PASSWORD_FILE",
)


class AgentConfigurationError(Exception):
    """The agent cannot work as configured (e.g. its API key is refused); retrying will not help."""


@dataclass(frozen=True, slots=True)
class Held:
    secret_id: str
    version: int


class SyncAgent:
    def __init__(
        self,
        client: SecretsClient,
        files: SecretFiles,
        kafka: KafkaSettings,
        *,
        resync_seconds: float = 300.0,
        on_change: str | None = None,
        on_change_timeout: float = 60.0,
        read_concurrency: int = 16,
        events: Callable[[], SecretEvents] | None = None,
    ) -> None:
        self.client = client
        self.files = files
        self.kafka = kafka
        self.resync_seconds = resync_seconds
        self.on_change = on_change
        self.on_change_timeout = on_change_timeout
        self.held: dict[str, Held] = {}
        self.project_id: str | None = None
        self.reads = 0
        self._reads = asyncio.Semaphore(read_concurrency)
        self._events = events or (lambda: SecretEvents(kafka, kafka.topic, None, from_beginning=False))
        self._next_resync = 0.0

    # --- the loop -----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Sync, mark ready, follow the events until `stop` is set; survives broker and service outages."""
        self.files.clear_ready()
        self.files.sweep()
        await self._until_synced(stop)
        if stop.is_set():
            return
        self.files.mark_ready()
        logger.info("first full sync done: %d secrets in %s", len(self.held), self.files.directory)
        backoff = 1.0
        while not stop.is_set():
            try:
                async with self._events() as events:
                    logger.info("following %s on %s", self.kafka.topic, self.kafka.for_logs)
                    backoff = 1.0
                    # Positioned at the end of the topic: a sync now misses nothing.
                    await self.full_sync()
                    async for batch in events.batches():
                        await self.apply(batch)
                        if self._resync_due():
                            await self.full_sync()
                        if stop.is_set():
                            break
            except (AgentConfigurationError, asyncio.CancelledError):
                raise
            except Exception as exc:
                logger.warning(
                    "events or sync interrupted (%s): reconnecting in %.0f s, resyncing every %.0f s meanwhile",
                    type(exc).__name__,
                    backoff,
                    self.resync_seconds,
                )
                await self._wait(stop, backoff)
                backoff = min(backoff * 2, 30.0)
                if self._resync_due() and not stop.is_set():
                    await self._try_full_sync()

    async def _until_synced(self, stop: asyncio.Event) -> None:
        backoff = 1.0
        while not stop.is_set():
            if await self._try_full_sync():
                return
            await self._wait(stop, backoff)
            backoff = min(backoff * 2, 30.0)

    async def _try_full_sync(self) -> bool:
        try:
            await self.full_sync()
        except AgentConfigurationError:
            raise
        except SecretsError as exc:
            logger.warning("full sync failed (%s); will retry", type(exc).__name__)
            self._next_resync = time.monotonic()
            return False
        return True

    @staticmethod
    async def _wait(stop: asyncio.Event, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)

    def _resync_due(self) -> bool:
        return time.monotonic() >= self._next_resync

    # --- a full sync --------------------------------------------------------------------

    async def full_sync(self) -> None:
        """List every secret; read those whose version is not what the files hold; remove the others' files."""
        try:
            secrets = await self.client.list()
        except (UnauthorizedError, ForbiddenError) as exc:
            raise AgentConfigurationError(
                f"the service refused the agent's API key ({exc.status}): SECRETS_API_KEY must be a "
                "valid key holding secrets:read (or secrets:manage)"
            ) from None
        if secrets:
            self.project_id = secrets[0].project_id
        listed = {}
        for secret in secrets:
            if valid_name(secret.name):
                listed[secret.name] = secret
            else:
                logger.warning("secret %s has a name that is not a safe file name: skipped", secret.id)
        stale = [
            s
            for s in listed.values()
            if self.held.get(s.name) != Held(s.id, s.version) or not self.files.exists(s.name)
        ]
        changed: set[str] = set()

        async def read_and_write(secret: Secret) -> None:
            value = await self._read(secret.id, None)
            if value is not None and self._store(secret.name, value):
                changed.add(secret.name)

        await asyncio.gather(*(read_and_write(secret) for secret in stale))
        for name in (set(self.held) | self.files.names()) - set(listed):
            self.held.pop(name, None)
            if self.files.remove(name):
                logger.info("removed %s (no longer listed)", name)
                changed.add(name)
        self._next_resync = time.monotonic() + self.resync_seconds
        await self._changed(changed)

    # --- events -------------------------------------------------------------------------

    async def apply(self, batch: Sequence[AnyEvent]) -> None:
        """Apply a batch of events: the newest event per secret, one read per new version."""
        latest: dict[str, AnyEvent] = {}
        for event in batch:
            if isinstance(event, SecretAccessed):
                continue
            if self.project_id is not None and event.project_id != self.project_id:
                continue
            if not valid_name(event.name):
                logger.warning(
                    "event %s names secret %s with an unsafe file name: skipped", event.id, event.secret_id
                )
                continue
            latest[event.secret_id] = event
        changed: set[str] = set()
        reads = []
        for event in latest.values():
            held = self.held.get(event.name)
            if isinstance(event, SecretDeleted):
                if held is not None and held.secret_id == event.secret_id:
                    del self.held[event.name]
                    if self.files.remove(event.name):
                        logger.info("removed %s (deleted)", event.name)
                        changed.add(event.name)
                continue
            if held is not None and held.secret_id == event.secret_id and held.version >= event.version:
                continue  # a repeat, or older than what the file holds
            reads.append(event)

        async def read_and_write(event: AnyEvent) -> None:
            # Each file is written as soon as its value arrives, not after the whole batch's reads.
            try:
                value = await self._read(event.secret_id, event.version)
            except SecretsError as exc:
                logger.warning("could not read %s (%s): resyncing soon", event.name, type(exc).__name__)
                self._next_resync = min(self._next_resync, time.monotonic() + 2.0)
                return
            if value is None:
                return
            if self.project_id is None:
                self.project_id = event.project_id
            if self._store(event.name, value):
                changed.add(event.name)

        await asyncio.gather(*(read_and_write(event) for event in reads))
        await self._changed(changed)

    # --- reads and writes ---------------------------------------------------------------

    async def _read(self, secret_id: str, version: int | None) -> SecretValue | None:
        """One value; None when the secret is gone (deleted since, or of another project)."""
        async with self._reads:
            try:
                self.reads += 1
                return await self.client.read_value(id=secret_id, version=version)
            except GoneError:
                # That version was pruned: a newer one exists, and this read gets it.
                self.reads += 1
                return await self.client.read_value(id=secret_id)
            except NotFoundError:
                return None

    def _store(self, name: str, value: SecretValue) -> bool:
        held = self.held.get(name)
        if held is not None and held.secret_id == value.id and held.version > value.version:
            return False  # a newer version arrived meanwhile
        changed = self.files.write(name, value.reveal())
        self.held[name] = Held(value.id, value.version)
        if changed:
            logger.info("wrote %s (version %d)", name, value.version)
        return changed

    async def _changed(self, names: set[str]) -> None:
        if not names:
            return
        self.files.write_env_file()
        if self.on_change:
            await self._run_on_change(sorted(names))

    async def _run_on_change(self, names: list[str]) -> None:
        assert self.on_change is not None
        env = {k: v for k, v in os.environ.items() if k not in PRIVATE_ENVIRONMENT}
        env["SECRETS_CHANGED"] = " ".join(names)
        env["SECRETS_DIR"] = str(self.files.directory)
        process = await asyncio.create_subprocess_shell(
            self.on_change, env=env, stdin=asyncio.subprocess.DEVNULL
        )
        try:
            code = await asyncio.wait_for(process.wait(), self.on_change_timeout)
        except TimeoutError:
            process.kill()
            await process.wait()
            logger.warning("--on-change ran longer than %.0f s and was killed", self.on_change_timeout)
            return
        if code != 0:
            logger.warning("--on-change exited with %d", code)
