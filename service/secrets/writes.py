"""The write jobs on secrets, and their plans.

Each job is made whole by the vault (ids, times, the event, the sealed value of a
create) and submitted to the group committer, which plans a run of jobs of one
class together and commits many in one transaction. The plans follow the `WriteJob`
protocol (service.db.plan): they only compute and yield statements, since on
SQLite they run in the driver's thread with the write lock held.

Computing includes sealing and opening values: a new version's number is known
only once its row is locked inside the transaction, and its sealed value is bound
to that number; a value read is audited in the same transaction that reads it,
and only a value that opens gets its `secret.accessed` event.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from service.clock import later_than_text
from service.crypto import Binding, DecryptionError, Keyring, seal, unseal
from service.db.plan import Plan
from service.errors import (
    Conflict,
    Gone,
    NotFound,
    PreconditionFailed,
    SecretNotFound,
    ServiceError,
    Unprocessable,
)
from service.events.model import OutboxEvent
from service.events.sql import insert_events
from service.secrets import sql
from service.secrets.model import (
    Created,
    IdempotencyClaim,
    IfMatch,
    SecretRecord,
    SecretValue,
    accessed_event,
    secret_event,
)


@dataclass(frozen=True, slots=True)
class IdempotencyKeyTaken:
    """Another request holds this Idempotency-Key: answer from its stored response."""


def conflict(name: str) -> Conflict:
    return Conflict(f"A secret named {name} already exists in this project")


def not_found() -> NotFound:
    return NotFound("No such secret in this project")


def etag(version: int) -> str:
    return f'"{version}"'


def precondition_failed(current: int | None) -> PreconditionFailed:
    if current is None:
        return PreconditionFailed("If-Match names a version, but there is no such secret in this project")
    return PreconditionFailed(
        f"The secret is at version {current}, which If-Match does not name", {"ETag": etag(current)}
    )


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A stored value that did not open (a platform fault): the vault reports it, no event is written."""

    secret_id: str
    version: int
    fault: str


@dataclass(frozen=True, slots=True, repr=False)
class CreateSecret:
    record: SecretRecord
    sealed: bytes
    event: OutboxEvent
    quota: int
    claim: IdempotencyClaim | None = None
    writes_events: ClassVar[bool] = True
    scrubs_old_values: ClassVar[bool] = False
    serial: ClassVar[bool] = True

    def __repr__(self) -> str:
        return f"CreateSecret(id={self.record.id!r}, name={self.record.name!r})"

    @classmethod
    def plan_batch(
        cls, jobs: Sequence[CreateSecret]
    ) -> Plan[Sequence[Created | IdempotencyKeyTaken | ServiceError]]:
        """Creates in one go: the quota and names checked across the batch, one insert for all.

        Each project's count is read (and locked where writers are concurrent) first; an
        Idempotency-Key is claimed by the first job that carries it; a name is taken by
        the first job in the batch, or by nobody when the database already holds it.
        """
        outcomes: list[Created | IdempotencyKeyTaken | ServiceError | None] = [None] * len(jobs)
        project_ids = sorted({job.record.project_id for job in jobs})
        counts = {row[0]: row[1] for row in (yield sql.secret_counts(project_ids))}
        claims = [job.claim for job in jobs if job.claim is not None]
        claimed = (
            {(row[0], row[1], row[2]) for row in (yield sql.claim_idempotency_keys(claims))}
            if claims
            else set()
        )
        candidates: list[int] = []
        names_in_batch: set[tuple[str, str]] = set()
        owned: set[tuple[str, str, str]] = set()
        unclaim: list[tuple[str, str, str]] = []
        for i, job in enumerate(jobs):
            record = job.record
            pair = None if job.claim is None else (job.claim.project_id, job.claim.api_key_id, job.claim.key)
            if pair is not None and (pair not in claimed or pair in owned):
                # The first job with a key owns its claim (its row went in); the others replay it.
                outcomes[i] = IdempotencyKeyTaken()
                continue
            if pair is not None:
                owned.add(pair)
            if (record.project_id, record.name) in names_in_batch:
                outcomes[i] = conflict(record.name)
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
        if candidates:
            going_in = [(jobs[i].record, jobs[i].sealed) for i in candidates]
            count = yield sql.insert_secrets(going_in)
            if count == len(going_in):
                inserted = {record.id for record, _ in going_in}
            else:
                rows = yield sql.existing_secret_ids([record.id for record, _ in going_in])
                inserted = {row[0] for row in rows}
        events = []
        for i in candidates:
            job = jobs[i]
            if job.record.id in inserted:
                outcomes[i] = Created(job.record)
                events.append(job.event)
            else:
                outcomes[i] = conflict(job.record.name)
                if job.claim is not None:
                    unclaim.append((job.claim.project_id, job.claim.api_key_id, job.claim.key))
        if unclaim:
            yield sql.release_idempotency_keys(unclaim)
        if events:
            yield insert_events(events)
            yield sql.add_to_secret_counts(
                Counter(jobs[i].record.project_id for i in candidates if jobs[i].record.id in inserted)
            )
        answered = [outcome for outcome in outcomes if outcome is not None]
        assert len(answered) == len(jobs), "every create has an outcome"
        return answered


@dataclass(frozen=True, slots=True, repr=False)
class UpdateSecret:
    """A new version of a value: `value`, or (with `restore_from`) the value of an earlier version.

    Without `if_match`, the last writer wins: concurrent updates each make their own
    version, in commit order. With it, the update applies only to a version it names.
    """

    project_id: str
    secret_id: str
    value: str | None
    keyring: Keyring
    at: str
    api_key_id: str
    request_id: str
    versions_kept: int
    if_match: IfMatch | None = None
    restore_from: int | None = None
    writes_events: ClassVar[bool] = True
    scrubs_old_values: ClassVar[bool] = True
    serial: ClassVar[bool] = False

    def __repr__(self) -> str:
        return f"UpdateSecret(secret_id={self.secret_id!r}, restore_from={self.restore_from!r})"

    @classmethod
    def plan_batch(cls, jobs: Sequence[UpdateSecret]) -> Plan[Sequence[SecretRecord | ServiceError]]:
        """New values of distinct secrets in five statements, whatever their number; otherwise (a
        restore, one secret twice, kept counts that differ) one job after another."""
        distinct = len({job.secret_id for job in jobs}) == len(jobs)
        if distinct and len({job.versions_kept for job in jobs}) == 1 and all(job.value is not None for job in jobs):
            return (yield from cls._plan_values(jobs))
        outcomes: list[SecretRecord | ServiceError] = []
        for job in jobs:
            outcomes.append((yield from job._plan()))
        return outcomes

    @classmethod
    def _plan_values(cls, jobs: Sequence[UpdateSecret]) -> Plan[list[SecretRecord | ServiceError]]:
        rows = yield sql.lock_secrets([job.secret_id for job in jobs])
        current = {row[0]: row for row in rows}
        outcomes: list[SecretRecord | ServiceError] = []
        changed: list[tuple[UpdateSecret, SecretRecord, bytes]] = []
        for job in jobs:
            row = current.get(job.secret_id)
            if row is None or row[1] != job.project_id:
                outcomes.append(not_found() if job.if_match is None else precondition_failed(None))
                continue
            _, _, version, name, created_at, updated_at = row
            if job.if_match is not None and not job.if_match.allows(version):
                outcomes.append(precondition_failed(version))
                continue
            assert job.value is not None
            at = later_than_text(job.at, updated_at)
            binding = Binding(job.project_id, job.secret_id, name, version + 1)
            sealed = seal(job.keyring, job.value, binding)
            record = SecretRecord(
                job.secret_id, job.project_id, name, job.keyring.primary_id, created_at, at, version + 1
            )
            changed.append((job, record, sealed))
            outcomes.append(record)
        if changed:
            ids = [record.id for _, record, _ in changed]
            yield sql.keep_current_versions(ids)
            yield sql.set_values(
                [(r.id, sealed, r.key_id, r.version, r.updated_at) for _, r, sealed in changed]
            )
            yield sql.prune_kept_versions(ids, jobs[0].versions_kept)
            yield insert_events(
                [
                    secret_event(
                        "secret.updated", r, api_key_id=job.api_key_id, request_id=job.request_id, at=r.updated_at
                    )
                    for job, r, _ in changed
                ]
            )
        return outcomes

    def _plan(self) -> Plan[SecretRecord | ServiceError]:
        rows = yield sql.lock_secret(self.project_id, self.secret_id)
        if not rows:
            return not_found() if self.if_match is None else precondition_failed(None)
        version, sealed, key_id, name, created_at, updated_at = rows[0]
        if self.if_match is not None and not self.if_match.allows(version):
            return precondition_failed(version)
        value = self.value
        if self.restore_from is not None:
            restored = yield from _value_of(
                self.keyring, self.project_id, self.secret_id, name, version, self.restore_from, bytes(sealed)
            )
            if not isinstance(restored, str):
                return restored
            value = restored
        assert value is not None
        new_version = version + 1
        at = later_than_text(self.at, updated_at)
        new_sealed = seal(self.keyring, value, Binding(self.project_id, self.secret_id, name, new_version))
        yield sql.keep_version(self.secret_id, version, sealed, key_id, updated_at)
        yield sql.set_value(self.secret_id, new_sealed, self.keyring.primary_id, new_version, at)
        yield sql.prune_versions(self.secret_id, new_version - self.versions_kept + 1)
        record = SecretRecord(
            self.secret_id, self.project_id, name, self.keyring.primary_id, created_at, at, new_version
        )
        event = secret_event(
            "secret.updated",
            record,
            api_key_id=self.api_key_id,
            request_id=self.request_id,
            at=at,
            restored_from=self.restore_from,
        )
        yield insert_events([event])
        return record


def _value_of(
    keyring: Keyring,
    project_id: str,
    secret_id: str,
    name: str,
    current: int,
    version: int,
    current_sealed: bytes,
) -> Plan[str | ServiceError]:
    """The plaintext of one version of a locked secret (Gone once pruned)."""
    if version == current:
        sealed = current_sealed
    elif not 1 <= version < current:
        return _missing_version(version, current)
    else:
        rows = yield sql.previous_value(secret_id, version)
        if not rows:
            return _missing_version(version, current)
        sealed = bytes(rows[0][0])
    try:
        return unseal(keyring, sealed, Binding(project_id, secret_id, name, version))
    except DecryptionError:
        return Unprocessable(f"Version {version} can no longer be read, so it cannot be restored")


def _missing_version(version: int, current: int) -> ServiceError:
    if 1 <= version < current:
        return Gone(f"Version {version} is no longer kept")
    return NotFound(f"This secret has no version {version}")


@dataclass(frozen=True, slots=True)
class DeleteSecret:
    project_id: str
    secret_id: str
    at: str
    api_key_id: str
    request_id: str
    if_match: IfMatch | None = None
    writes_events: ClassVar[bool] = True
    scrubs_old_values: ClassVar[bool] = True
    serial: ClassVar[bool] = True

    @classmethod
    def plan_batch(cls, jobs: Sequence[DeleteSecret]) -> Plan[Sequence[SecretRecord | ServiceError]]:
        outcomes: list[SecretRecord | ServiceError] = []
        for job in jobs:
            rows = yield sql.lock_secret(job.project_id, job.secret_id)
            if not rows:
                outcomes.append(not_found() if job.if_match is None else precondition_failed(None))
                continue
            version, _sealed, key_id, name, created_at, updated_at = rows[0]
            if job.if_match is not None and not job.if_match.allows(version):
                outcomes.append(precondition_failed(version))
                continue
            yield sql.delete_versions(job.secret_id)
            yield sql.delete_secret(job.secret_id)
            record = SecretRecord(
                job.secret_id, job.project_id, name, key_id, created_at, updated_at, version
            )
            event = secret_event(
                "secret.deleted", record, api_key_id=job.api_key_id, request_id=job.request_id, at=job.at
            )
            yield insert_events([event])
            yield sql.add_to_secret_counts({job.project_id: -1})
            outcomes.append(record)
        return outcomes


@dataclass(frozen=True, slots=True)
class ReadValue:
    """A value read and its audit event, committed together: no value leaves without its event.

    By `name` or `secret_id`; `version` None is the current one.
    """

    project_id: str
    keyring: Keyring
    at: str
    api_key_id: str
    request_id: str
    name: str | None = None
    secret_id: str | None = None
    version: int | None = None
    writes_events: ClassVar[bool] = True
    scrubs_old_values: ClassVar[bool] = False
    serial: ClassVar[bool] = False

    @classmethod
    def plan_batch(cls, jobs: Sequence[ReadValue]) -> Plan[Sequence[SecretValue | Unreadable | ServiceError]]:
        """The reads of current values by name in one statement (the common read: a consumer's,
        by the name it knows); any other read alone. Then every event in one insert."""
        by_name = [job.name is not None and job.version is None for job in jobs]
        current: dict[tuple[str, str], Sequence[Any]] | None = None
        if sum(by_name) > 1:
            pairs = sorted({(job.project_id, job.name) for job, named in zip(jobs, by_name, strict=True) if named and job.name})
            current = {(row[0], row[2]): row for row in (yield sql.current_values_by_names(pairs))}
        outcomes: list[SecretValue | Unreadable | ServiceError] = []
        events: list[OutboxEvent] = []
        for job, named in zip(jobs, by_name, strict=True):
            outcome: SecretValue | Unreadable | ServiceError
            if current is not None and named:
                row = current.get((job.project_id, job.name or ""))
                outcome = job._open_current(row[1:]) if row is not None else _no_such_secret()
            else:
                outcome = yield from job._plan()
            if isinstance(outcome, SecretValue):
                events.append(
                    accessed_event(
                        job.project_id,
                        outcome.id,
                        outcome.name,
                        outcome.version,
                        api_key_id=job.api_key_id,
                        request_id=job.request_id,
                        at=job.at,
                    )
                )
            outcomes.append(outcome)
        if events:
            yield insert_events(events)
        return outcomes

    def _plan(self) -> Plan[SecretValue | Unreadable | ServiceError]:
        if self.name is not None:
            rows = yield sql.current_value_by_name(self.project_id, self.name)
        else:
            assert self.secret_id is not None
            rows = yield sql.current_value_by_id(self.project_id, self.secret_id)
        if not rows:
            return _no_such_secret()
        if self.version is None:
            return self._open_current(rows[0])
        secret_id, name, current, sealed, updated_at = rows[0]
        version = self.version
        if version != current:
            previous = (yield sql.previous_value(secret_id, version)) if 1 <= version < current else []
            if not previous:
                missing = _missing_version(version, current)
                return SecretNotFound(missing.message) if isinstance(missing, NotFound) else missing
            sealed, updated_at = previous[0]
        return self._open(secret_id, name, version, sealed, updated_at)

    def _open_current(self, row: Sequence[Any]) -> SecretValue | Unreadable:
        """The current value from a row of (id, name, version, sealed_value, updated_at)."""
        secret_id, name, version, sealed, updated_at = row
        return self._open(secret_id, name, version, sealed, updated_at)

    def _open(self, secret_id: str, name: str, version: int, sealed: bytes, updated_at: str) -> SecretValue | Unreadable:
        try:
            value = unseal(self.keyring, bytes(sealed), Binding(self.project_id, secret_id, name, version))
        except DecryptionError as exc:
            return Unreadable(secret_id, version, str(exc))
        return SecretValue(secret_id, name, value, version, updated_at)


def _no_such_secret() -> SecretNotFound:
    return SecretNotFound("No such secret in this project")
