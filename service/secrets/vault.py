"""What the API does with secrets: seal values, make write jobs whole, read metadata and values."""

from __future__ import annotations

import logging
import re

from service import ids, metrics
from service.accounts.model import Principal
from service.clock import Clock, iso_utc
from service.crypto import Binding, Keyring, derive_key, keyed_fingerprint, seal
from service.db.store import Store
from service.errors import (
    BadRequest,
    Conflict,
    SecretNotFound,
    ServiceError,
    ServiceUnavailable,
    Unprocessable,
    ValueUnreadable,
)
from service.secrets import sql
from service.secrets.model import (
    Created,
    IdempotencyClaim,
    IfMatch,
    NewSecret,
    SecretRecord,
    SecretValue,
    VersionInfo,
    from_snapshot,
    secret_event,
    snapshot,
)
from service.secrets.writes import (
    CreateSecret,
    DeleteSecret,
    IdempotencyKeyTaken,
    ReadValue,
    Unreadable,
    UpdateSecret,
    not_found,
)

logger = logging.getLogger("service.secrets")

_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")
# Ids are UUIDs (ids.uuid7); anything else cannot exist, and must not reach the database (NUL on PostgreSQL).
_SECRET_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,254}")


class Vault:
    def __init__(
        self,
        store: Store,
        keyring: Keyring,
        hash_key: bytes,
        quota: int,
        clock: Clock,
        versions_kept: int = 10,
    ) -> None:
        self._store = store
        self._keyring = keyring
        # The fingerprints' key is derived from, never equal to, the API-key hash key.
        self._fingerprint_key = derive_key(hash_key, "idempotency-fingerprint/v1")
        self._quota = quota
        self._clock = clock
        self._versions_kept = versions_kept

    async def create(
        self, principal: Principal, new: NewSecret, request_id: str, idempotency_key: str | None
    ) -> Created:
        now = iso_utc(self._clock.now())
        record = SecretRecord(
            id=ids.uuid7(),
            project_id=principal.project_id,
            name=new.name,
            key_id=self._keyring.primary_id,
            created_at=now,
            updated_at=now,
            version=1,
        )
        sealed = seal(self._keyring, new.value, Binding(record.project_id, record.id, record.name, 1))
        event = secret_event(
            "secret.created", record, api_key_id=principal.api_key_id, request_id=request_id, at=now
        )
        claim = None
        if idempotency_key is not None:
            if not _IDEMPOTENCY_KEY.fullmatch(idempotency_key):
                raise BadRequest("Idempotency-Key must be 1 to 255 visible ASCII characters")
            # Bound to the project and the API key: another key's retry with the same
            # Idempotency-Key is a request of its own, and can learn nothing from this record.
            fingerprint = keyed_fingerprint(
                self._fingerprint_key,
                b"POST /api/secrets",
                principal.project_id.encode(),
                principal.api_key_id.encode(),
                new.name.encode(),
                new.value.encode(),
            )
            replay = await self._replay(principal, idempotency_key, fingerprint)
            if replay is not None:
                return replay
            claim = IdempotencyClaim(
                principal.project_id,
                principal.api_key_id,
                idempotency_key,
                fingerprint,
                201,
                snapshot(record),
                now,
            )
        try:
            outcome: Created | IdempotencyKeyTaken = await self._store.write(
                CreateSecret(record, sealed, event, self._quota, claim)
            )
        except Conflict:
            if claim is not None and (replay := await self._replay(principal, claim.key, claim.fingerprint)):
                return replay
            raise
        if isinstance(outcome, IdempotencyKeyTaken):
            assert claim is not None
            replay = await self._replay(principal, claim.key, claim.fingerprint)
            if replay is None:
                raise Conflict("A request with this Idempotency-Key is in progress; retry")
            return replay
        return outcome

    async def _replay(self, principal: Principal, key: str, fingerprint: str) -> Created | None:
        rows = await self._store.fetch(
            sql.find_idempotency_claim(principal.project_id, principal.api_key_id, key)
        )
        if not rows:
            return None
        stored_fingerprint, response = rows[0]
        if stored_fingerprint != fingerprint:
            raise Unprocessable("This Idempotency-Key was already used with a different request")
        return Created(from_snapshot(response), replayed=True)

    async def list_secrets(self, principal: Principal) -> list[SecretRecord]:
        return [SecretRecord(*row) for row in await self._store.fetch(sql.list_secrets(principal.project_id))]

    async def get(self, principal: Principal, secret_id: str) -> SecretRecord:
        if not _SECRET_ID.fullmatch(secret_id):
            raise not_found()
        rows = await self._store.fetch(sql.get_secret(principal.project_id, secret_id))
        if not rows:
            raise not_found()
        return SecretRecord(*rows[0])

    async def versions(self, principal: Principal, secret_id: str) -> list[VersionInfo]:
        """The kept versions of a value, newest first (never a value)."""
        current = await self.get(principal, secret_id)
        previous = await self._store.fetch(sql.previous_versions(secret_id))
        return [VersionInfo(current.version, current.updated_at)] + [VersionInfo(v, at) for v, at in previous]

    async def update(
        self,
        principal: Principal,
        secret_id: str,
        value: str,
        request_id: str,
        if_match: IfMatch | None = None,
    ) -> SecretRecord:
        return await self._new_version(principal, secret_id, request_id, if_match, value=value)

    async def restore(
        self,
        principal: Principal,
        secret_id: str,
        version: int,
        request_id: str,
        if_match: IfMatch | None = None,
    ) -> SecretRecord:
        """A new version equal to `version` (Gone once that version is pruned)."""
        return await self._new_version(principal, secret_id, request_id, if_match, restore_from=version)

    async def _new_version(
        self,
        principal: Principal,
        secret_id: str,
        request_id: str,
        if_match: IfMatch | None,
        *,
        value: str | None = None,
        restore_from: int | None = None,
    ) -> SecretRecord:
        if not _SECRET_ID.fullmatch(secret_id):
            raise not_found()
        job = UpdateSecret(
            project_id=principal.project_id,
            secret_id=secret_id,
            value=value,
            keyring=self._keyring,
            at=iso_utc(self._clock.now()),
            api_key_id=principal.api_key_id,
            request_id=request_id,
            versions_kept=self._versions_kept,
            if_match=if_match,
            restore_from=restore_from,
        )
        return await self._store.write(job)

    async def delete(
        self, principal: Principal, secret_id: str, request_id: str, if_match: IfMatch | None = None
    ) -> SecretRecord:
        if not _SECRET_ID.fullmatch(secret_id):
            raise not_found()
        job = DeleteSecret(
            principal.project_id,
            secret_id,
            iso_utc(self._clock.now()),
            principal.api_key_id,
            request_id,
            if_match,
        )
        return await self._store.write(job)

    async def read_value(
        self,
        principal: Principal,
        request_id: str,
        *,
        name: str | None = None,
        secret_id: str | None = None,
        version: int | None = None,
    ) -> SecretValue:
        """One version of a value (the current one by default), audited: its `secret.accessed`
        event commits before the value is returned, or the value is not returned."""
        if name is not None and not _NAME.fullmatch(name):
            raise SecretNotFound("No such secret in this project")
        if secret_id is not None and not _SECRET_ID.fullmatch(secret_id):
            raise SecretNotFound("No such secret in this project")
        job = ReadValue(
            project_id=principal.project_id,
            keyring=self._keyring,
            at=iso_utc(self._clock.now()),
            api_key_id=principal.api_key_id,
            request_id=request_id,
            name=name,
            secret_id=secret_id,
            version=version,
        )
        try:
            outcome: SecretValue | Unreadable = await self._store.write(job)
        except ServiceError:
            raise
        except Exception as exc:
            # Whatever kept the audit row from committing, no value leaves unrecorded: the caller may retry.
            logger.error("a value read could not be recorded (%s); no value was returned", type(exc).__name__)
            raise ServiceUnavailable(
                "The read could not be recorded, so no value is returned; retry"
            ) from None
        if isinstance(outcome, Unreadable):
            metrics.DECRYPTION_FAILURES.inc()
            logger.error(
                "secret value unreadable: secret %s version %d (%s); a platform fault, not the caller's",
                outcome.secret_id,
                outcome.version,
                outcome.fault,
            )
            raise ValueUnreadable("The stored value could not be decrypted")
        return outcome
