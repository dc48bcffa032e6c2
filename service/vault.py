"""What the API does with secrets: seal values, stage writes and their events, map outcomes."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from service import ids, repository
from service.auth import Principal
from service.crypto import Keyring, associated_data, keyed_fingerprint, seal
from service.errors import BadRequest, Conflict, NotFound, Unprocessable
from service.outbox import iso_utc, new_event, utc_now
from service.repository import OutboxEvent, SecretRecord
from service.statements import Plan
from service.store import Store
from service.validation import NewSecret

_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")
# Ids are UUIDs (ids.uuid7); anything else cannot exist, and must not reach the database (NUL on PostgreSQL).
_SECRET_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _later(at: str, previous: str) -> str:
    """`at`, or one millisecond after `previous` when the clock has not moved past it."""
    if at > previous:
        return at
    return iso_utc(datetime.fromisoformat(previous) + timedelta(milliseconds=1))


@dataclass(frozen=True, slots=True)
class Created:
    record: SecretRecord
    replayed: bool = False


class _IdempotencyKeyTaken:
    """Another request holds this Idempotency-Key: answer from its stored response."""


@dataclass(slots=True, repr=False)
class CreateSecret:
    record: SecretRecord
    sealed: bytes
    event: OutboxEvent
    quota: int
    claim: tuple[str, str, str, int, str, str] | None
    writes_events = True

    @classmethod
    def plan_batch(cls, jobs: Sequence[CreateSecret], dialect: str) -> Plan[list[Any]]:
        outcomes: list[Any] = [None] * len(jobs)
        project_ids = sorted({job.record.project_id for job in jobs})
        counts = dict((yield repository.secret_counts(project_ids, lock=dialect == "postgresql")))
        claims = [job.claim for job in jobs if job.claim is not None]
        claimed = (
            {tuple(row) for row in (yield repository.claim_idempotency_keys(claims))} if claims else set()
        )
        candidates: list[int] = []
        names_in_batch: set[tuple[str, str]] = set()
        owned: set[tuple[str, str]] = set()
        unclaim = []
        for i, job in enumerate(jobs):
            record = job.record
            pair = None if job.claim is None else (job.claim[0], job.claim[1])
            if pair is not None and (pair not in claimed or pair in owned):
                # The first job with a key owns its claim (its row went in); the others replay it.
                outcomes[i] = _IdempotencyKeyTaken()
                continue
            if pair is not None:
                owned.add(pair)
            if (record.project_id, record.name) in names_in_batch:
                outcomes[i] = _conflict(record.name)
            elif counts.get(record.project_id, job.quota) >= job.quota:
                outcomes[i] = Unprocessable(f"This project has reached its limit of {job.quota} secrets")
            else:
                names_in_batch.add((record.project_id, record.name))
                counts[record.project_id] += 1
                candidates.append(i)
                continue
            if pair is not None:
                unclaim.append(pair)
        inserted: set[str] = set()
        if candidates and dialect == "sqlite":
            going_in = [(jobs[i].record, jobs[i].sealed) for i in candidates]
            count = yield repository.insert_secrets(going_in, returning=False)
            if count == len(going_in):
                inserted = {record.id for record, _ in going_in}
            else:
                rows = yield repository.existing_secret_ids([record.id for record, _ in going_in])
                inserted = {row[0] for row in rows}
        elif candidates:
            rows = yield repository.insert_secrets(
                [(jobs[i].record, jobs[i].sealed) for i in candidates], returning=True
            )
            inserted = {row[0] for row in rows}
        events = []
        for i in candidates:
            job = jobs[i]
            if job.record.id in inserted:
                outcomes[i] = Created(job.record)
                events.append(job.event)
            else:
                outcomes[i] = _conflict(job.record.name)
                if job.claim is not None:
                    unclaim.append((job.claim[0], job.claim[1]))
        yield repository.release_idempotency_keys(unclaim)
        if events:
            yield repository.insert_events(events)
        yield repository.add_to_secret_counts(
            Counter(jobs[i].record.project_id for i in candidates if jobs[i].record.id in inserted)
        )
        return outcomes


@dataclass(slots=True, repr=False)
class UpdateSecret:
    project_id: str
    secret_id: str
    sealed: bytes
    key_id: str
    at: str
    api_key_id: str
    request_id: str
    writes_events = True
    scrubs_old_values = True

    @classmethod
    def plan_batch(cls, jobs: Sequence[UpdateSecret], dialect: str) -> Plan[list[Any]]:
        outcomes: list[Any] = []
        for job in jobs:
            rows = yield repository.update_secret_value(
                job.project_id, job.secret_id, job.sealed, job.key_id, job.at
            )
            if not rows:
                outcomes.append(_not_found())
                continue
            record = repository.secret_from_row(rows[0])
            event = new_event(
                "secret.updated", record, api_key_id=job.api_key_id, request_id=job.request_id, at=job.at
            )
            yield repository.insert_events([event])
            outcomes.append(record)
        return outcomes


@dataclass(slots=True)
class DeleteSecret:
    project_id: str
    secret_id: str
    at: str
    api_key_id: str
    request_id: str
    writes_events = True
    scrubs_old_values = True

    @classmethod
    def plan_batch(cls, jobs: Sequence[DeleteSecret], dialect: str) -> Plan[list[Any]]:
        outcomes: list[Any] = []
        for job in jobs:
            rows = yield repository.delete_secret(job.project_id, job.secret_id)
            if not rows:
                outcomes.append(_not_found())
                continue
            record = repository.secret_from_row(rows[0])
            event = new_event(
                "secret.deleted", record, api_key_id=job.api_key_id, request_id=job.request_id, at=job.at
            )
            yield repository.insert_events([event])
            yield repository.add_to_secret_counts({job.project_id: -1})
            outcomes.append(record)
        return outcomes


def _conflict(name: str) -> Conflict:
    return Conflict(f"A secret named {name} already exists in this project")


def _not_found() -> NotFound:
    return NotFound("No such secret in this project")


class Vault:
    def __init__(self, store: Store, keyring: Keyring, hash_key: bytes, quota: int) -> None:
        self._store = store
        self._keyring = keyring
        self._hash_key = hash_key
        self._quota = quota

    async def create(
        self, principal: Principal, new: NewSecret, request_id: str, idempotency_key: str | None
    ) -> Created:
        now = utc_now()
        record = SecretRecord(
            id=ids.uuid7(),
            project_id=principal.project_id,
            name=new.name,
            key_id=self._keyring.primary_id,
            created_at=now,
            updated_at=now,
        )
        sealed = seal(self._keyring, new.value, associated_data(record.project_id, record.id, record.name))
        event = new_event(
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
            claim = (
                principal.project_id,
                idempotency_key,
                fingerprint,
                201,
                json.dumps(record.to_json()),
                now,
            )
        try:
            outcome = await self._store.write(CreateSecret(record, sealed, event, self._quota, claim))
        except Conflict:
            if (
                claim is not None
                and (replay := await self._replay(principal, claim[1], claim[2])) is not None
            ):
                return replay
            raise
        if isinstance(outcome, _IdempotencyKeyTaken):
            assert claim is not None
            replay = await self._replay(principal, claim[1], claim[2])
            if replay is None:
                raise Conflict("A request with this Idempotency-Key is in progress; retry")
            return replay
        assert isinstance(outcome, Created)
        return outcome

    async def _replay(self, principal: Principal, key: str, fingerprint: str) -> Created | None:
        stored = await self._store.read(
            lambda conn: repository.find_idempotent_response(conn, principal.project_id, key)
        )
        if stored is None:
            return None
        if stored["fingerprint"] != fingerprint:
            raise Unprocessable("This Idempotency-Key was already used with a different request")
        body = json.loads(stored["response_body"])
        record = SecretRecord(
            id=body["id"],
            project_id=body["projectId"],
            name=body["name"],
            key_id="",
            created_at=body["createdAt"],
            updated_at=body["updatedAt"],
        )
        return Created(record, replayed=True)

    async def list(self, principal: Principal) -> list[SecretRecord]:
        return await self._store.read(lambda conn: repository.list_secrets(conn, principal.project_id))

    async def get(self, principal: Principal, secret_id: str) -> SecretRecord:
        if not _SECRET_ID.fullmatch(secret_id):
            raise _not_found()
        record = await self._store.read(
            lambda conn: repository.get_secret(conn, principal.project_id, secret_id)
        )
        if record is None:
            raise _not_found()
        return record

    async def update(self, principal: Principal, secret_id: str, value: str, request_id: str) -> SecretRecord:
        current = await self.get(principal, secret_id)
        sealed = seal(self._keyring, value, associated_data(current.project_id, current.id, current.name))
        job = UpdateSecret(
            project_id=principal.project_id,
            secret_id=secret_id,
            sealed=sealed,
            key_id=self._keyring.primary_id,
            at=_later(utc_now(), current.updated_at),
            api_key_id=principal.api_key_id,
            request_id=request_id,
        )
        record: SecretRecord = await self._store.write(job)
        return record

    async def delete(self, principal: Principal, secret_id: str, request_id: str) -> SecretRecord:
        if not _SECRET_ID.fullmatch(secret_id):
            raise _not_found()
        job = DeleteSecret(principal.project_id, secret_id, utc_now(), principal.api_key_id, request_id)
        record: SecretRecord = await self._store.write(job)
        return record
