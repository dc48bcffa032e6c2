"""The write jobs on secrets, and their plans.

Each job is made whole by the vault (ids, times, sealed value, event) and submitted
to the group committer, which plans a run of jobs of one class together and commits
many in one transaction. The plans follow the `WriteJob` protocol (service.db.plan):
they only compute and yield statements, since on SQLite they run in the driver's
thread with the write lock held.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from service.db.plan import Plan
from service.errors import Conflict, NotFound, ServiceError, Unprocessable
from service.events.model import OutboxEvent
from service.events.sql import insert_events
from service.secrets import sql
from service.secrets.model import Created, IdempotencyClaim, SecretRecord, secret_event


@dataclass(frozen=True, slots=True)
class IdempotencyKeyTaken:
    """Another request holds this Idempotency-Key: answer from its stored response."""


def conflict(name: str) -> Conflict:
    return Conflict(f"A secret named {name} already exists in this project")


def not_found() -> NotFound:
    return NotFound("No such secret in this project")


@dataclass(frozen=True, slots=True, repr=False)
class CreateSecret:
    record: SecretRecord
    sealed: bytes
    event: OutboxEvent
    quota: int
    claim: IdempotencyClaim | None = None
    writes_events: ClassVar[bool] = True
    scrubs_old_values: ClassVar[bool] = False

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
            {(row[0], row[1]) for row in (yield sql.claim_idempotency_keys(claims))} if claims else set()
        )
        candidates: list[int] = []
        names_in_batch: set[tuple[str, str]] = set()
        owned: set[tuple[str, str]] = set()
        unclaim: list[tuple[str, str]] = []
        for i, job in enumerate(jobs):
            record = job.record
            pair = None if job.claim is None else (job.claim.project_id, job.claim.key)
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
                    unclaim.append((job.claim.project_id, job.claim.key))
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
    project_id: str
    secret_id: str
    sealed: bytes
    key_id: str
    at: str
    api_key_id: str
    request_id: str
    writes_events: ClassVar[bool] = True
    scrubs_old_values: ClassVar[bool] = True

    def __repr__(self) -> str:
        return f"UpdateSecret(secret_id={self.secret_id!r})"

    @classmethod
    def plan_batch(cls, jobs: Sequence[UpdateSecret]) -> Plan[Sequence[SecretRecord | ServiceError]]:
        outcomes: list[SecretRecord | ServiceError] = []
        for job in jobs:
            rows = yield sql.update_secret_value(
                job.project_id, job.secret_id, job.sealed, job.key_id, job.at
            )
            if not rows:
                outcomes.append(not_found())
                continue
            record = SecretRecord(*rows[0])
            event = secret_event(
                "secret.updated", record, api_key_id=job.api_key_id, request_id=job.request_id, at=job.at
            )
            yield insert_events([event])
            outcomes.append(record)
        return outcomes


@dataclass(frozen=True, slots=True)
class DeleteSecret:
    project_id: str
    secret_id: str
    at: str
    api_key_id: str
    request_id: str
    writes_events: ClassVar[bool] = True
    scrubs_old_values: ClassVar[bool] = True

    @classmethod
    def plan_batch(cls, jobs: Sequence[DeleteSecret]) -> Plan[Sequence[SecretRecord | ServiceError]]:
        outcomes: list[SecretRecord | ServiceError] = []
        for job in jobs:
            rows = yield sql.delete_secret(job.project_id, job.secret_id)
            if not rows:
                outcomes.append(not_found())
                continue
            record = SecretRecord(*rows[0])
            event = secret_event(
                "secret.deleted", record, api_key_id=job.api_key_id, request_id=job.request_id, at=job.at
            )
            yield insert_events([event])
            yield sql.add_to_secret_counts({job.project_id: -1})
            outcomes.append(record)
        return outcomes
