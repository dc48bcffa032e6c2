"""Operator actions on projects and API keys, run from the command line."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from service.accounts import sql
from service.accounts.model import SCOPES, IssuedKey, KeyInfo, format_scopes, parse_scopes
from service.clock import Clock, iso_utc
from service.crypto import generate_api_key, hash_api_key
from service.db.plan import Plan, StatementJob
from service.db.store import Store
from service.errors import BadRequest, NotFound, ServiceError, Unprocessable


@dataclass(frozen=True, slots=True, repr=False)
class _IssueKey:
    """Insert a key (and, for a new project, the project first); the key is stored only hashed."""

    issued: IssuedKey
    key_hash: str
    at: str
    project_name: str | None = None
    writes_events: ClassVar[bool] = False
    scrubs_old_values: ClassVar[bool] = False
    serial: ClassVar[bool] = False

    @classmethod
    def plan_batch(cls, jobs: Sequence[_IssueKey]) -> Plan[Sequence[IssuedKey | ServiceError]]:
        outcomes: list[IssuedKey | ServiceError] = []
        for job in jobs:
            project_id = job.issued.project_id
            if job.project_name is not None:
                yield sql.insert_project(project_id, job.project_name, job.at)
            elif not (yield sql.project_exists(project_id)):
                outcomes.append(NotFound(f"No project with id {project_id}"))
                continue
            yield sql.insert_api_key(
                job.issued.api_key_id, project_id, job.key_hash, format_scopes(job.issued.scopes), job.at
            )
            outcomes.append(job.issued)
        return outcomes


def _new_key(hash_key: bytes, project_id: str, scopes: Iterable[str]) -> tuple[IssuedKey, str]:
    granted = frozenset(scopes)
    if not granted or not granted <= set(SCOPES):
        raise BadRequest(f"scopes must be one or more of {', '.join(SCOPES)}")
    api_key = generate_api_key()
    return IssuedKey(project_id, str(uuid.uuid4()), api_key, granted), hash_api_key(hash_key, api_key)


def project_name(name: str) -> str:
    """A project's name as stored: trimmed, and not empty (Unprocessable otherwise)."""
    if not name.strip():
        raise Unprocessable("A project name must not be empty")
    return name.strip()


async def create_project(store: Store, hash_key: bytes, clock: Clock, name: str) -> IssuedKey:
    """A new project and its first API key, holding every scope.

    The key is returned once and stored only as a keyed hash.
    """
    name = project_name(name)
    issued, key_hash = _new_key(hash_key, "project_" + uuid.uuid4().hex, SCOPES)
    return await store.write(_IssueKey(issued, key_hash, iso_utc(clock.now()), project_name=name))


async def issue_api_key(
    store: Store, hash_key: bytes, clock: Clock, project_id: str, scopes: Iterable[str] = SCOPES
) -> IssuedKey:
    """Another key for an existing project (NotFound otherwise), holding `scopes`."""
    issued, key_hash = _new_key(hash_key, project_id, scopes)
    return await store.write(_IssueKey(issued, key_hash, iso_utc(clock.now())))


async def list_api_keys(store: Store, project_id: str) -> list[KeyInfo]:
    """A project's keys with their scopes (NotFound for a project that does not exist)."""
    if not await store.fetch(sql.project_exists(project_id)):
        raise NotFound(f"No project with id {project_id}")
    return [
        KeyInfo(key_id, parse_scopes(scopes), created_at, revoked_at)
        for key_id, scopes, created_at, revoked_at in await store.fetch(sql.list_api_keys(project_id))
    ]


async def revoke_api_key(store: Store, clock: Clock, api_key_id: str) -> bool:
    """Revoke a key; False when there is no such unrevoked key."""
    rows = await store.write(StatementJob(sql.revoke_api_key(api_key_id, iso_utc(clock.now()))))
    return bool(rows)
