"""What wrk sends in a round: one class per API route, each with its wrk script.

A route is its wrk script (bench/<route>.lua; done() prints one "BENCH_RESULT {json}"
line, see tally.lua) and the arguments the script takes after `--`; what it sets up
before the rounds (prepare); what each success must have left in the database, counted
per round (round_check) and over the run (verify); and the request the event-latency
probe sends. Bench.route says which one a run loads.

Every round has a prefix unique within the run (BENCH_<runid>_<round>): create names its
secrets with it, read and update send it in X-Request-ID (PREFIX-<thread>-<counter>),
which the service writes into the event of each answer.
"""

from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path
from typing import Any, Protocol

from . import BENCH, Database, log
from .load import http

VALUE = "bench-value-0123456789abcdef-0123456789abcdef"  # the bare app answers one as long


class Setup(Protocol):
    """What a route may use of the run to prepare itself."""

    run_id: str
    tmp: Path
    token: str  # the project's first key: every scope
    db: Database

    def service_url(self) -> str: ...
    def bare_url(self) -> str: ...
    def issue_key(self, *scopes: str) -> str: ...
    def key_pool(self, *scopes: str) -> str: ...


class Route(Protocol):
    name: str
    method: str
    path: str  # the URL wrk is given; the script sets each request's own path
    script: Path
    ok: int  # the status of a success
    committed_key: str  # the round's field counting what its successes left in the database
    check_key: str  # the round's field saying every success left it
    base_label: str  # the rounds before the prefill, as the table labels them
    request: str  # what the route is, for the report
    token: str  # the key of the route's own requests (setup, probes)
    keys: str  # what wrk sends: "@<file>" of keys its requests take turns with

    def prepare(self, setup: Setup) -> dict[str, Any]: ...
    def script_args(self, prefix: str, count: bool) -> list[str]: ...
    def round_check(
        self, db: Database, prefix: str, seq_before: int, ok: int, sent: int
    ) -> dict[str, Any]: ...
    def probe(self, n: int, run_id: str) -> tuple[str, str, dict[str, Any] | None]: ...
    def verify(
        self,
        db: Database,
        rounds: list[dict[str, Any]],
        extra_ok: int,
        extra_sent: int,
        service_ids: set[str],
    ) -> dict[str, Any]: ...


def _count(count: bool) -> list[str]:
    return ["count"] if count else []


def _create_many(url: str, token: str, names: list[str]) -> list[str]:
    """Create secrets (VALUE) through the service, a few at a time; their ids, in the order of names."""

    def one(name: str) -> str:
        for _ in range(30):
            status, body = http(
                "POST", f"{url}/api/secrets", {"name": name, "value": VALUE}, {"X-Auth-Token": token}
            )
            if status != 429:
                break
            time.sleep(1.0)  # over the key's rate limit (on at its default): its Retry-After is 1 s
        if status != 201:
            raise RuntimeError(f"creating {name} answered {status}: {body!r}")
        return str(body["id"])

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        return list(pool.map(one, names))


def _same_shape(what: str, service: tuple[int, Any], bare: tuple[int, Any], status: int) -> None:
    """The service and the bare app answer one request with the same status and the same body keys."""
    for who, (got, body) in (("service", service), ("bare app", bare)):
        if got != status:
            raise RuntimeError(f"{who} answered {got} to {what}: {body!r}")
    if set(service[1]) != set(bare[1]):
        raise RuntimeError(
            f"{what}: the bare app's body {sorted(bare[1])} is not shaped like the service's {sorted(service[1])}"
        )


def _events_check(
    db: Database, event_type: str, prefix: str, seq_before: int, ok: int, sent: int
) -> dict[str, Any]:
    """The round's events (by request id): one per success, none twice, none beyond what was sent."""
    events, distinct = db.events_after(seq_before, event_type, prefix + "-")
    return {
        "events_committed": events,
        "duplicate_request_ids": events - distinct,
        # events beyond the successes are requests wrk cut off at the deadline, answered after it stopped
        "ok": ok <= events <= sent and events == distinct,
    }


class CreateRoute:
    """POST /api/secrets with a unique name per request: PREFIX_<wrk thread>_<counter>.

    Every 201 must be a row: the round's rows are counted by name prefix. With "count",
    the script's response() tallies every status code (see bench/README.md for what that
    costs wrk).
    """

    name = "create"
    method = "POST"
    path = "/api/secrets"
    script = BENCH / "create.lua"
    ok = 201
    committed_key = "rows_committed"
    check_key = "all_201_in_db"
    base_label = "empty DB"
    request = "POST /api/secrets"

    def __init__(self) -> None:
        self.token = ""
        self.keys = ""  # what wrk sends: "@<file>" of keys to take turns with

    def prepare(self, setup: Setup) -> dict[str, Any]:
        self.token = setup.token
        self.keys = setup.key_pool()
        return {}

    def script_args(self, prefix: str, count: bool) -> list[str]:
        return [self.keys, prefix, *_count(count)]

    def round_check(self, db: Database, prefix: str, seq_before: int, ok: int, sent: int) -> dict[str, Any]:
        rows = db.rows_with_prefix(prefix)
        # every 201 must be a row; rows beyond the 201s are requests wrk cut off at the end
        return {"rows_committed": rows, "all_201_in_db": ok <= rows <= sent}

    def probe(self, n: int, run_id: str) -> tuple[str, str, dict[str, Any] | None]:
        return "POST", "/api/secrets", {"name": f"PROBE_{run_id}_{n}", "value": "probe"}

    def verify(
        self,
        db: Database,
        rounds: list[dict[str, Any]],
        extra_ok: int,
        extra_sent: int,
        service_ids: set[str],
    ) -> dict[str, Any]:
        total_201 = sum(r["count_201"] for r in rounds) + extra_ok
        total_sent = sum(r["wrk"]["requests_sent"] for r in rounds) + extra_sent
        per_round_ok = all(r["all_201_in_db"] for r in rounds)
        return {
            "rows_created_by_service": len(service_ids),
            "answers_201": total_201,
            "requests_sent": total_sent,
            "every_201_in_db": per_round_ok and total_201 <= len(service_ids) <= total_sent,
            "rows_beyond_201s": len(service_ids) - total_201,
        }


class ReadRoute:
    """GET /api/secrets/by-name/{name}/value (the audited value read) over secrets made before the rounds.

    prepare creates `count` secrets READ_<runid>_<i> and issues a key with secrets:read
    only (a sync consumer's). Every 200 must carry its secret.accessed event, committed
    with the read: per round, the events whose requestId has the round's prefix are
    counted against the 200s, and none may repeat a request id.
    """

    name = "read"
    method = "GET"
    path = "/"
    script = BENCH / "read.lua"
    ok = 200
    committed_key = "events_committed"
    check_key = "all_200_audited"
    request = "GET /api/secrets/by-name/{name}/value (audited)"

    def __init__(self, count: int = 1000) -> None:
        self.count = count
        self.base_label = f"{count:,} secrets"
        self.token = ""
        self.keys = ""  # what wrk sends: "@<file>" of keys to take turns with
        self.names = ""

    def prepare(self, setup: Setup) -> dict[str, Any]:
        self.names = f"READ_{setup.run_id}"
        log(f"creating {self.count:,} secrets to read ({self.names}_0 ..) and a secrets:read key")
        _create_many(setup.service_url(), setup.token, [f"{self.names}_{i}" for i in range(self.count)])
        self.token = setup.issue_key("secrets:read")
        self.keys = setup.key_pool("secrets:read")
        method, path, _ = self.probe(0, setup.run_id)
        headers = {"X-Auth-Token": self.token}
        _same_shape(
            f"{method} {path}",
            http(method, setup.service_url() + path, None, headers),
            http(method, setup.bare_url() + path, None, headers),
            self.ok,
        )
        return {
            "secrets": self.count,
            "names": f"{self.names}_0 .. {self.names}_{self.count - 1}",
            "scopes": ["secrets:read"],
        }

    def script_args(self, prefix: str, count: bool) -> list[str]:
        return [self.keys, prefix, self.names, str(self.count), *_count(count)]

    def round_check(self, db: Database, prefix: str, seq_before: int, ok: int, sent: int) -> dict[str, Any]:
        check = _events_check(db, "secret.accessed", prefix, seq_before, ok, sent)
        return {
            "events_committed": check["events_committed"],
            "duplicate_request_ids": check["duplicate_request_ids"],
            "all_200_audited": check["ok"],
        }

    def probe(self, n: int, run_id: str) -> tuple[str, str, dict[str, Any] | None]:
        return "GET", f"/api/secrets/by-name/{self.names}_{n % self.count}/value", None

    def verify(
        self,
        db: Database,
        rounds: list[dict[str, Any]],
        extra_ok: int,
        extra_sent: int,
        service_ids: set[str],
    ) -> dict[str, Any]:
        return {
            "rows_created_by_service": len(service_ids),
            "answers_200": sum(r["count_200"] for r in rounds),
            "requests_sent": sum(r["wrk"]["requests_sent"] for r in rounds),
            "accessed_events": sum(r["events_committed"] for r in rounds),
            "duplicate_request_ids": sum(r["duplicate_request_ids"] for r in rounds),
            "every_200_audited": all(r["all_200_audited"] for r in rounds),
        }


class UpdateRoute:
    """PUT /api/secrets/{id} (a new version) over secrets made before the rounds, spread over wrk's threads.

    prepare creates `count` secrets UPDATE_<runid>_<i> and writes their ids to a file the
    script reads (update.lua: each thread has its own share, taken in turn). Per round,
    the secret.updated events with the round's request-id prefix are counted against the
    200s; at the end, each secret's version, its secret.updated events and its kept
    previous versions must add up: versions 2..v announced once each, the last
    versions_kept - 1 previous versions kept.
    """

    name = "update"
    method = "PUT"
    path = "/"
    script = BENCH / "update.lua"
    ok = 200
    committed_key = "events_committed"
    check_key = "all_200_versioned"
    request = "PUT /api/secrets/{id}"

    def __init__(self, threads: int, count: int = 1000, versions_kept: int = 10) -> None:
        self.threads = threads
        self.count = count
        self.versions_kept = versions_kept
        self.base_label = f"{count:,} secrets"
        self.token = ""
        self.keys = ""  # what wrk sends: "@<file>" of keys to take turns with
        self.names = ""
        self.ids_file = Path()
        self.probe_id = ""

    def prepare(self, setup: Setup) -> dict[str, Any]:
        self.names = f"UPDATE_{setup.run_id}"
        log(f"creating {self.count:,} secrets to update ({self.names}_0 ..)")
        ids = _create_many(setup.service_url(), setup.token, [f"{self.names}_{i}" for i in range(self.count)])
        self.ids_file = setup.tmp / "update-ids.txt"
        self.ids_file.write_text("".join(f"{i}\n" for i in ids))
        # the probe updates a secret of its own, outside the set the rounds check
        (self.probe_id,) = _create_many(setup.service_url(), setup.token, [f"PROBE_{setup.run_id}_UPDATE"])
        self.token = setup.token
        self.keys = setup.key_pool()
        method, path, body = self.probe(0, setup.run_id)
        headers = {"X-Auth-Token": self.token}
        _same_shape(
            f"{method} {path}",
            http(method, setup.service_url() + path, body, headers),
            http(method, setup.bare_url() + path, body, headers),
            self.ok,
        )
        return {
            "secrets": self.count,
            "names": f"{self.names}_0 .. {self.names}_{self.count - 1}",
            "threads": self.threads,
        }

    def script_args(self, prefix: str, count: bool) -> list[str]:
        return [self.keys, prefix, str(self.ids_file), str(self.threads), *_count(count)]

    def round_check(self, db: Database, prefix: str, seq_before: int, ok: int, sent: int) -> dict[str, Any]:
        check = _events_check(db, "secret.updated", prefix, seq_before, ok, sent)
        return {
            "events_committed": check["events_committed"],
            "duplicate_request_ids": check["duplicate_request_ids"],
            "all_200_versioned": check["ok"],
        }

    def probe(self, n: int, run_id: str) -> tuple[str, str, dict[str, Any] | None]:
        return "PUT", f"/api/secrets/{self.probe_id}", {"value": f"probe-{n}"}

    def verify(
        self,
        db: Database,
        rounds: list[dict[str, Any]],
        extra_ok: int,
        extra_sent: int,
        service_ids: set[str],
    ) -> dict[str, Any]:
        versions = db.versions_with_prefix(self.names)
        events = db.updated_event_versions()
        kept = db.kept_versions()
        inconsistent: list[str] = []
        for secret_id, version in versions.items():
            n, distinct, lo, hi = events.get(secret_id, (0, 0, 0, 0))
            if not (n == distinct == version - 1 and (version == 1 or (lo, hi) == (2, version))):
                inconsistent.append(
                    f"{secret_id}: version {version}, secret.updated events {n} ({distinct} versions {lo}..{hi})"
                )
                continue
            want = min(version - 1, self.versions_kept - 1)
            k, klo, khi = kept.get(secret_id, (0, 0, 0))
            if k != want or (want and (klo, khi) != (version - want, version - 1)):
                inconsistent.append(
                    f"{secret_id}: version {version}, kept {k} previous versions {klo}..{khi}, expected {want}"
                )
        answers = sum(r["count_200"] for r in rounds)
        sent = sum(r["wrk"]["requests_sent"] for r in rounds)
        added = sum(v - 1 for v in versions.values())
        return {
            "rows_created_by_service": len(service_ids),
            "answers_200": answers,
            "requests_sent": sent,
            "updated_events": sum(r["events_committed"] for r in rounds),
            "duplicate_request_ids": sum(r["duplicate_request_ids"] for r in rounds),
            "secrets_updated": len(versions),
            "versions_added": added,
            "secrets_inconsistent": len(inconsistent),
            "inconsistencies": inconsistent[:10],
            "every_200_versioned": all(r["all_200_versioned"] for r in rounds)
            and len(versions) == self.count
            and not inconsistent
            and answers <= added <= sent,
        }


def make_route(name: str, threads: int) -> Route:
    if name == "create":
        return CreateRoute()
    if name == "read":
        return ReadRoute()
    if name == "update":
        return UpdateRoute(threads)
    raise ValueError(f"unknown route {name!r}")
