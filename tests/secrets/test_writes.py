"""The write plans, fed canned statement results: what one batch decides, with no database.

A plan yields statements and is sent each one's result. Here a small stand-in for the
database answers them, so each case a real batch can hold is set up exactly: a name
taken twice, the quota boundary, one Idempotency-Key claimed twice, a conflict with
the database, an update and a delete of one secret.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest

from service.crypto import Binding, DecryptionError, Keyring, generate_master_key_entry, unseal
from service.db.plan import Execute, ExecuteMany, Fetch, FetchByKeys, Plan, Statement, UpdateMany, batch_plan
from service.errors import Conflict, NotFound, PreconditionFailed, Unprocessable
from service.secrets.model import Created, IdempotencyClaim, IfMatch, SecretRecord, secret_event
from service.secrets.writes import CreateSecret, DeleteSecret, IdempotencyKeyTaken, ReadValue, UpdateSecret

AT = "2030-01-01T00:00:00.000Z"
QUOTA = 10


def run(plan: Plan[Any], answer: Callable[[Statement], Any]) -> tuple[Any, list[Statement]]:
    """Drive a plan to its end; returns its outcomes and the statements it yielded."""
    statements: list[Statement] = []
    result: Any = None
    try:
        while True:
            statement = plan.send(result)
            statements.append(statement)
            result = answer(statement)
    except StopIteration as done:
        return done.value, statements


class CannedDatabase:
    """Answers the create plan's statements as a database holding `counts` and `taken` names would."""

    def __init__(
        self,
        counts: dict[str, int],
        taken: set[tuple[str, str]] | None = None,
        held_keys: set[tuple[str, str, str]] | None = None,
    ) -> None:
        self.counts = counts
        self.taken = set(taken or ())
        self.held_keys = set(held_keys or ())
        self.inserted: list[str] = []

    def __call__(self, statement: Statement) -> Any:
        sql = statement.sql
        if sql.startswith("SELECT id, secret_count FROM projects"):
            assert isinstance(statement, Fetch) and statement.for_update, "counts are read under lock"
            return [(p, self.counts[p]) for p in statement.params if p in self.counts]
        if sql.startswith("INSERT INTO idempotency_keys"):
            assert isinstance(statement, Fetch)
            params = list(statement.params)
            went_in = []
            for i in range(0, len(params), 7):
                pair = (params[i], params[i + 1], params[i + 2])
                if pair not in self.held_keys:
                    self.held_keys.add(pair)
                    went_in.append(pair)
            return went_in
        if sql.startswith("INSERT INTO secrets"):
            assert isinstance(statement, Execute)
            params = list(statement.params)
            count = 0
            for i in range(0, len(params), 8):
                secret_id, project_id, name = params[i], params[i + 1], params[i + 2]
                if (project_id, name) not in self.taken:
                    self.taken.add((project_id, name))
                    self.inserted.append(secret_id)
                    count += 1
            return count
        if sql.startswith("SELECT id FROM secrets WHERE id IN"):
            return [(i,) for i in statement.params if i in self.inserted]  # type: ignore[union-attr]
        if isinstance(statement, ExecuteMany):
            return None
        return 1


def new_create(
    name: str, project: str = "p1", key: str | None = None, fingerprint: str = "f"
) -> CreateSecret:
    record = SecretRecord(f"id-{name}-{key}-{fingerprint}", project, name, "k1", AT, AT)
    event = secret_event("secret.created", record, api_key_id="key-1", request_id="r", at=AT)
    claim = None if key is None else IdempotencyClaim(project, "key-1", key, fingerprint, 201, "{}", AT)
    return CreateSecret(record, b"sealed", event, QUOTA, claim)


def statements_like(statements: Sequence[Statement], prefix: str) -> list[Statement]:
    return [s for s in statements if not isinstance(s, UpdateMany | FetchByKeys) and s.sql.startswith(prefix)]


def test_two_creates_of_one_name_in_a_batch_give_one_secret_and_one_conflict() -> None:
    jobs = [new_create("DUP", key=None, fingerprint="a"), new_create("DUP", key=None, fingerprint="b")]
    database = CannedDatabase({"p1": 0})

    outcomes, statements = run(CreateSecret.plan_batch(jobs), database)

    assert outcomes[0] == Created(jobs[0].record)
    assert isinstance(outcomes[1], Conflict)
    (insert,) = statements_like(statements, "INSERT INTO secrets")
    assert len(insert.params) == 8, "only the first of the two goes to the database"
    (events,) = statements_like(statements, "INSERT INTO outbox")
    assert jobs[0].event.event_id in events.params and jobs[1].event.event_id not in events.params
    (counts,) = statements_like(statements, "UPDATE projects")
    assert list(counts.rows) == [(1, "p1")]  # type: ignore[union-attr]


def test_the_quota_boundary_inside_a_batch_lets_exactly_the_room_left_in() -> None:
    jobs = [new_create(f"S_{i}") for i in range(4)] + [new_create("ELSEWHERE", project="p2")]
    database = CannedDatabase({"p1": QUOTA - 2, "p2": 0})

    outcomes, statements = run(CreateSecret.plan_batch(jobs), database)

    assert [type(o) for o in outcomes] == [Created, Created, Unprocessable, Unprocessable, Created]
    assert outcomes[2].message == f"This project has reached its limit of {QUOTA} secrets"
    (counts,) = statements_like(statements, "UPDATE projects")
    assert sorted(counts.rows) == [(1, "p2"), (2, "p1")]  # type: ignore[union-attr]


def test_one_idempotency_key_claimed_twice_in_a_batch_creates_once_and_replays_once() -> None:
    first, retry = new_create("KEYED", key="req-1"), new_create("KEYED", key="req-1")
    database = CannedDatabase({"p1": 0})

    outcomes, statements = run(CreateSecret.plan_batch([first, retry]), database)

    assert outcomes == [Created(first.record), IdempotencyKeyTaken()]
    assert database.inserted == [first.record.id]
    assert database.held_keys == {("p1", "key-1", "req-1")}
    assert not statements_like(statements, "DELETE FROM idempotency_keys"), "the claim stays with the winner"


def test_a_create_that_conflicts_with_the_database_releases_its_claim() -> None:
    job = new_create("EXISTING", key="req-2")
    database = CannedDatabase({"p1": 1}, taken={("p1", "EXISTING")})

    outcomes, statements = run(CreateSecret.plan_batch([job]), database)

    assert isinstance(outcomes[0], Conflict)
    (release,) = statements_like(statements, "DELETE FROM idempotency_keys")
    assert list(release.rows) == [("p1", "key-1", "req-2")]  # type: ignore[union-attr]
    assert not statements_like(statements, "INSERT INTO outbox"), "no event for a secret not created"
    assert not statements_like(statements, "UPDATE projects")


def test_a_create_over_the_quota_releases_its_claim_so_a_retry_is_refused_again() -> None:
    job = new_create("OVER", key="req-3")
    database = CannedDatabase({"p1": QUOTA})

    outcomes, statements = run(CreateSecret.plan_batch([job]), database)

    assert isinstance(outcomes[0], Unprocessable)
    (release,) = statements_like(statements, "DELETE FROM idempotency_keys")
    assert list(release.rows) == [("p1", "key-1", "req-3")]  # type: ignore[union-attr]
    assert not statements_like(statements, "INSERT INTO secrets")


KEYRING = Keyring.parse(generate_master_key_entry("k1"))
RECORD = SecretRecord("s1", "p1", "NAME", "k1", AT, AT, 1)


class CannedSecrets:
    """Answers the update and delete plans as a database holding secrets of project p1 at `versions`."""

    def __init__(self, versions: dict[str, int]) -> None:
        self.versions: dict[str, int] = dict(versions)
        self.kept: list[tuple[str, int]] = []
        self.pruned_below: dict[str, int] = {}

    def __call__(self, statement: Statement) -> Any:
        sql = statement.sql if not isinstance(statement, UpdateMany | FetchByKeys) else ""
        if isinstance(statement, UpdateMany):
            assert statement.table == "secrets" and statement.key == "id"
            assert len({row[0] for row in statement.rows}) == len(statement.rows), "one row per secret"
            for row in statement.rows:
                self.versions[row[0]] = row[statement.columns.index("version") + 1]
            return None
        if sql.startswith("SELECT version, sealed_value") or sql.startswith("SELECT id, project_id, version"):
            assert isinstance(statement, Fetch) and statement.for_update, "rows are locked before they change"
            if sql.startswith("SELECT version"):
                secret_id = statement.params[0]
                if secret_id not in self.versions:
                    return []
                return [(self.versions[secret_id], b"sealed", "k1", "NAME", AT, AT)]
            return [
                (i, "p1", self.versions[i], f"NAME_{i}", AT, AT)
                for i in statement.params
                if i in self.versions
            ]
        if sql.startswith("INSERT INTO secret_versions"):
            if "SELECT" in sql:
                self.kept += [(i, self.versions[i]) for i in statement.params]
            else:
                self.kept.append((statement.params[0], statement.params[1]))  # type: ignore[index]
        elif sql.startswith("UPDATE secrets SET sealed_value"):
            self.versions[statement.params[4]] = statement.params[2]  # type: ignore[index]
        elif sql.startswith("DELETE FROM secret_versions WHERE secret_id = ? AND version <"):
            self.pruned_below[statement.params[0]] = statement.params[1]  # type: ignore[index]
        elif sql.startswith("DELETE FROM secret_versions WHERE secret_id IN"):
            *ids, kept = statement.params
            for i in ids:
                self.pruned_below[i] = self.versions[i] - kept + 1
        elif sql.startswith("DELETE FROM secrets"):
            del self.versions[statement.params[0]]  # type: ignore[index]
        return 1


def OneSecret(version: int = 1) -> CannedSecrets:
    return CannedSecrets({"s1": version})


def update_job(
    if_match: IfMatch | None = None, kept: int = 10, secret_id: str = "s1", project_id: str = "p1"
) -> UpdateSecret:
    return UpdateSecret(
        project_id,
        secret_id,
        f"new value of {secret_id}",
        KEYRING,
        "2030-01-01T00:00:01.000Z",
        "key-1",
        "r1",
        kept,
        if_match,
    )


def delete_job(if_match: IfMatch | None = None) -> DeleteSecret:
    return DeleteSecret("p1", "s1", "2030-01-01T00:00:02.000Z", "key-1", "r2", if_match)


def event_types(statements: Sequence[Statement]) -> list[str]:
    """The types of the events the statements insert (five columns a row)."""
    return [t for s in statements_like(statements, "INSERT INTO outbox") for t in s.params[1::5]]  # type: ignore[union-attr,index]


def test_updates_of_one_secret_in_a_batch_make_consecutive_versions_each_sealed_for_its_own() -> None:
    database = OneSecret(version=3)

    outcomes, statements = run(batch_plan([update_job(), update_job()]), database)

    assert [o.version for o in outcomes] == [4, 5]
    assert database.kept == [("s1", 3), ("s1", 4)], "each replaced version is kept"
    sealed = [s.params[0] for s in statements_like(statements, "UPDATE secrets SET sealed_value")]  # type: ignore[union-attr,index]
    assert unseal(KEYRING, sealed[0], Binding("p1", "s1", "NAME", 4)) == "new value of s1"
    with pytest.raises(DecryptionError):
        unseal(KEYRING, sealed[0], Binding("p1", "s1", "NAME", 5))
    assert event_types(statements) == ["secret.updated", "secret.updated"]


def test_versions_past_the_kept_number_are_pruned() -> None:
    database = OneSecret(version=7)

    run(UpdateSecret.plan_batch([update_job(kept=3)]), database)

    assert database.versions["s1"] == 8
    assert database.pruned_below == {"s1": 6}, "versions 6, 7 and 8 are kept"


def test_if_match_lets_one_of_two_updates_naming_one_version_through() -> None:
    database = OneSecret(version=2)
    both = [update_job(IfMatch(frozenset({2}))), update_job(IfMatch(frozenset({2})))]

    outcomes, statements = run(UpdateSecret.plan_batch(both), database)

    assert outcomes[0].version == 3
    assert isinstance(outcomes[1], PreconditionFailed)
    assert outcomes[1].headers == {"ETag": '"3"'}
    assert event_types(statements) == ["secret.updated"]


def test_an_update_then_a_delete_of_one_secret_in_a_batch_both_commit_in_order() -> None:
    database = OneSecret(version=1)

    outcomes, statements = run(batch_plan([update_job(), delete_job()]), database)

    assert outcomes[0].version == 2
    assert outcomes[1].version == 2, "the delete saw the update"
    assert event_types(statements) == ["secret.updated", "secret.deleted"]
    (count,) = statements_like(statements, "UPDATE projects")
    assert list(count.rows) == [(-1, "p1")]  # type: ignore[union-attr]


def test_an_update_after_a_delete_in_the_same_batch_is_not_found_and_emits_nothing() -> None:
    database = OneSecret(version=1)

    outcomes, statements = run(batch_plan([delete_job(), update_job()]), database)

    assert outcomes[0].version == 1
    assert isinstance(outcomes[1], NotFound)
    assert event_types(statements) == ["secret.deleted"]


def test_a_delete_naming_a_stale_version_changes_nothing() -> None:
    database = OneSecret(version=4)

    outcomes, statements = run(DeleteSecret.plan_batch([delete_job(IfMatch(frozenset({3})))]), database)

    assert isinstance(outcomes[0], PreconditionFailed)
    assert database.versions["s1"] == 4
    assert event_types(statements) == []


def test_updates_of_many_secrets_in_a_batch_take_five_statements_and_answer_each_alone() -> None:
    database = CannedSecrets({"s1": 1, "s2": 4, "s3": 9})
    jobs = [
        update_job(secret_id="s1"),
        update_job(secret_id="missing"),
        update_job(IfMatch(frozenset({3})), secret_id="s2"),
        update_job(secret_id="s3", kept=10),
        update_job(secret_id="s4", project_id="another project"),
    ]

    outcomes, statements = run(UpdateSecret.plan_batch(jobs), database)

    assert outcomes[0].version == 2 and outcomes[3].version == 10
    assert isinstance(outcomes[1], NotFound) and isinstance(outcomes[4], NotFound)
    assert isinstance(outcomes[2], PreconditionFailed) and outcomes[2].headers == {"ETag": '"4"'}
    assert len(statements) == 5
    assert database.versions == {"s1": 2, "s2": 4, "s3": 10}
    assert database.kept == [("s1", 1), ("s3", 9)]
    assert database.pruned_below == {"s1": -7, "s3": 1}
    (values,) = [s for s in statements if isinstance(s, UpdateMany)]
    for secret_id, sealed, _, version, _ in values.rows:
        binding = Binding("p1", secret_id, f"NAME_{secret_id}", version)
        assert unseal(KEYRING, sealed, binding) == f"new value of {secret_id}"
    (events,) = statements_like(statements, "INSERT INTO outbox")
    assert events.params[1::5] == ["secret.updated", "secret.updated"]  # type: ignore[union-attr,index]
    assert events.params[2::5] == ["s1", "s3"], "subjects"  # type: ignore[union-attr,index]


def test_reads_by_name_in_a_batch_take_one_statement_and_only_answered_reads_are_audited() -> None:
    from service.crypto import seal
    from service.errors import SecretNotFound
    from service.secrets.model import SecretValue

    def sealed(secret_id: str, name: str, value: str) -> bytes:
        return seal(KEYRING, value, Binding("p1", secret_id, name, 2))

    stored = {("p1", "A"): ("p1", "sa", "A", 2, sealed("sa", "A", "value a"), AT)}

    def answer(statement: Statement) -> Any:
        assert not isinstance(statement, UpdateMany)
        if isinstance(statement, FetchByKeys):
            assert statement.key == ("project_id", "name")
            return [stored[(project, name)] for project, name in statement.keys if (project, name) in stored]
        if statement.sql.startswith("SELECT id, name, version"):  # by id
            return [stored[("p1", "A")][1:]]
        return 1

    def read(name: str | None = None, secret_id: str | None = None) -> ReadValue:
        return ReadValue("p1", KEYRING, AT, "key-1", f"r-{name}-{secret_id}", name=name, secret_id=secret_id)

    jobs = [read("A"), read("MISSING"), read(secret_id="sa"), read("A")]
    outcomes, statements = run(ReadValue.plan_batch(jobs), answer)

    assert [type(o) for o in outcomes] == [SecretValue, SecretNotFound, SecretValue, SecretValue]
    assert {o.value for o in outcomes if isinstance(o, SecretValue)} == {"value a"}
    (by_names,) = [s for s in statements if isinstance(s, FetchByKeys)]
    assert sorted(by_names.keys) == [("p1", "A"), ("p1", "MISSING")], "each name asked once"
    assert event_types(statements) == ["secret.accessed"] * 3
