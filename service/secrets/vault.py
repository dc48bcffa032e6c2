"""What the API does with secrets: seal values, make write jobs whole, read metadata back."""

from __future__ import annotations

import re

from service import ids
from service.accounts.model import Principal
from service.clock import Clock, iso_utc, later_than
from service.crypto import Keyring, associated_data, keyed_fingerprint, seal
from service.db.store import Store
from service.errors import BadRequest, Conflict, Unprocessable
from service.secrets import sql
from service.secrets.model import (
    Created,
    IdempotencyClaim,
    NewSecret,
    SecretRecord,
    from_snapshot,
    secret_event,
    snapshot,
)
from service.secrets.writes import CreateSecret, DeleteSecret, IdempotencyKeyTaken, UpdateSecret, not_found

_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")
# Ids are UUIDs (ids.uuid7); anything else cannot exist, and must not reach the database (NUL on PostgreSQL).
_SECRET_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class Vault:
    def __init__(self, store: Store, keyring: Keyring, hash_key: bytes, quota: int, clock: Clock) -> None:
        self._store = store
        self._keyring = keyring
        self._hash_key = hash_key
        self._quota = quota
        self._clock = clock

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
        )
        sealed = seal(self._keyring, new.value, associated_data(record.project_id, record.id, record.name))
        event = secret_event(
            "secret.created", record, api_key_id=principal.api_key_id, request_id=request_id, at=now
        )
        claim = None
        if idempotency_key is not None:
            if not _IDEMPOTENCY_KEY.fullmatch(idempotency_key):
                raise BadRequest("Idempotency-Key must be 1 to 255 visible ASCII characters")
            fingerprint = keyed_fingerprint(
                self._hash_key, b"POST /api/secrets", new.name.encode(), new.value.encode()
            )
            replay = await self._replay(principal, idempotency_key, fingerprint)
            if replay is not None:
                return replay
            claim = IdempotencyClaim(
                principal.project_id, idempotency_key, fingerprint, 201, snapshot(record), now
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
        rows = await self._store.fetch(sql.find_idempotency_claim(principal.project_id, key))
        if not rows:
            return None
        stored_fingerprint, response = rows[0]
        if stored_fingerprint != fingerprint:
            raise Unprocessable("This Idempotency-Key was already used with a different request")
        return Created(from_snapshot(response), replayed=True)

    async def list(self, principal: Principal) -> list[SecretRecord]:
        return [SecretRecord(*row) for row in await self._store.fetch(sql.list_secrets(principal.project_id))]

    async def get(self, principal: Principal, secret_id: str) -> SecretRecord:
        if not _SECRET_ID.fullmatch(secret_id):
            raise not_found()
        rows = await self._store.fetch(sql.get_secret(principal.project_id, secret_id))
        if not rows:
            raise not_found()
        return SecretRecord(*rows[0])

    async def update(self, principal: Principal, secret_id: str, value: str, request_id: str) -> SecretRecord:
        current = await self.get(principal, secret_id)
        sealed = seal(self._keyring, value, associated_data(current.project_id, current.id, current.name))
        job = UpdateSecret(
            project_id=principal.project_id,
            secret_id=secret_id,
            sealed=sealed,
            key_id=self._keyring.primary_id,
            at=later_than(self._clock.now(), current.updated_at),
            api_key_id=principal.api_key_id,
            request_id=request_id,
        )
        return await self._store.write(job)

    async def delete(self, principal: Principal, secret_id: str, request_id: str) -> SecretRecord:
        if not _SECRET_ID.fullmatch(secret_id):
            raise not_found()
        job = DeleteSecret(
            principal.project_id, secret_id, iso_utc(self._clock.now()), principal.api_key_id, request_id
        )
        return await self._store.write(job)
