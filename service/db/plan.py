"""Statements as data, plans that yield them, and the write-job protocol.

A plan is a generator that yields statements and is sent each one's result; it
returns what the caller asked for. Rooms above describe their reads and writes as
plans and never see a connection or a driver: the database room runs the plan, on
whichever database is configured. Statements use `?` placeholders.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, Self, TypeVar

from service.errors import ServiceError

T = TypeVar("T")
R_co = TypeVar("R_co", covariant=True)


@dataclass(frozen=True, slots=True)
class Fetch:
    """Run a statement and receive its rows (sequences of column values).

    `for_update` locks the selected rows until commit where writers run concurrently
    (PostgreSQL); a database with a single writer needs no lock and ignores it.
    `packed` names the columns when every one is text, an integer or null: the runner
    may then fetch all rows in one step (on SQLite, each row stepped is a hand-off of
    the GIL between the driver's thread and the event loop).
    """

    sql: str
    params: Sequence[Any] = ()
    for_update: bool = False
    packed: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class FetchByKeys:
    """Receive the `columns` of the rows of `table` whose `key` columns (text) equal one of `keys`.

    The database runs it as it plans best. PostgreSQL joins the keys unnested from one array
    per key column: one statement text whatever the number of keys, so it is prepared and
    planned once, where a list of ORed equalities is a new statement, planned anew, for each
    number of keys (and was planned as a scan of the whole project while its statistics
    were stale). SQLite runs the ORed equalities, each an index lookup.
    """

    table: str
    columns: tuple[str, ...]
    key: tuple[str, ...]
    keys: Sequence[Sequence[str]]


@dataclass(frozen=True, slots=True)
class Execute:
    """Run a statement and receive how many rows it changed."""

    sql: str
    params: Sequence[Any] = ()


@dataclass(frozen=True, slots=True)
class ExecuteMany:
    """Run a statement once per row of parameters; receives None."""

    sql: str
    rows: Sequence[Sequence[Any]]


@dataclass(frozen=True, slots=True)
class UpdateMany:
    """Set `columns` of many rows of `table`, each found by its `key` (distinct keys); receives None.

    Each row of `rows` is the key, then the columns' values. The database runs it as it
    does best: SQLite as one UPDATE ... FROM (VALUES ...) (one step of its thread, where
    ExecuteMany hands the GIL over once a row), PostgreSQL as one prepared UPDATE for all rows.
    """

    table: str
    key: str
    columns: tuple[str, ...]
    rows: Sequence[Sequence[Any]]


Statement = Fetch | FetchByKeys | Execute | ExecuteMany | UpdateMany
Plan = Generator[Statement, Any, T]


def single(statement: Statement) -> Plan[Any]:
    """A plan of one statement, returning its result."""
    result = yield statement
    return result


class WriteJob(Protocol[R_co]):
    """A unit of work for the group committer, which commits many jobs in one transaction.

    Consecutive jobs of one class are planned together by `plan_batch`, which yields
    statements and returns one outcome per job, in order: a result for its caller, or a
    ServiceError raised to that caller alone. The plan runs inside the committer's
    transaction, and where it runs depends on the database: on SQLite, synchronously in
    the driver's thread, the whole batch in one hop; on PostgreSQL, on the event loop,
    awaiting each statement. So a plan must only compute: no awaiting, no I/O, no
    clock, no logging of its inputs, nothing slow (SQLite's write lock is held); and it
    never commits or rolls back. Whatever it needs (ids, times, sealed values, events)
    is made before the job is submitted.
    """

    # Whether committing this job adds outbox rows (the relay is woken after the commit).
    writes_events: ClassVar[bool]
    # Whether it replaces or deletes sealed values (SQLite then truncates the WAL they linger in).
    scrubs_old_values: ClassVar[bool]
    # Whether its plan locks one row that all jobs of its class lock (a project's secret count): such
    # jobs are committed on one connection only, where the database offers several.
    serial: ClassVar[bool]

    @classmethod
    def plan_batch(cls, jobs: Sequence[Self]) -> Plan[Sequence[R_co | ServiceError]]: ...


@dataclass(frozen=True, slots=True)
class StatementJob:
    """One statement committed with the next batch; its outcome is the statement's result."""

    statement: Statement
    writes_events: ClassVar[bool] = False
    scrubs_old_values: ClassVar[bool] = False
    serial: ClassVar[bool] = False

    @classmethod
    def plan_batch(cls, jobs: Sequence[StatementJob]) -> Plan[Sequence[Any]]:
        results = []
        for job in jobs:
            results.append((yield job.statement))
        return results


def batch_plan(jobs: Sequence[WriteJob[Any]]) -> Plan[list[Any]]:
    """One plan for a whole batch: runs of consecutive jobs of one class are planned together."""
    outcomes: list[Any] = []
    start = 0
    while start < len(jobs):
        end = start + 1
        while end < len(jobs) and type(jobs[end]) is type(jobs[start]):
            end += 1
        outcomes.extend((yield from type(jobs[start]).plan_batch(jobs[start:end])))
        start = end
    return outcomes
