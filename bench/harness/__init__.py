"""The benchmark behind bench/run (see bench/README.md): one API route, one database, against a bare ceiling.

cli        the command line (options, defaults, --help) and the results files it writes
run        Bench: one run, from starting the processes to the result dict
routes     what wrk sends: one class per API route (create, read, update), with its wrk script,
           the setup it needs before the rounds and what each answer must leave in the database
load       wrk, the HTTP clients and the event-latency probe (kcat)
processes  the processes a run starts and stops, ports, CPU and memory accounting
balancer   the loopback nginx in front of several replicas (config derived from config/nginx.conf)
sqlite     the service's SQLite file seen from outside: counts, the prefill
postgres   the service's PostgreSQL database seen from outside (psql): counts, the prefill (COPY)
prefill    the rows a prefill inserts, shaped like a service-made row (either database)
report     the targets, the markdown table, the machine description, the profile summary

Standard library only: bench/run re-executes itself with .venv/bin/python before importing it.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Protocol

BENCH = Path(__file__).resolve().parent.parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Database(Protocol):
    """What the harness reads from the service's database, whichever it is (sqlite.Db, postgres.Db).

    A name prefix P selects the project's secrets named P_...; a request prefix R the
    events whose payload's requestId starts with R.
    """

    name: str
    project_id: str

    def describe(self) -> str: ...
    def total_rows(self) -> int: ...
    def rows_with_prefix(self, prefix: str) -> int: ...
    def service_secret_ids(self, prefill_prefix: str) -> set[str]: ...
    def versions_with_prefix(self, prefix: str) -> dict[str, int]: ...
    def last_seq(self) -> int: ...
    def events_after(self, seq: int, event_type: str, request_prefix: str) -> tuple[int, int]: ...
    def outbox_events(self) -> list[tuple[str, str]]: ...
    def updated_event_versions(self) -> dict[str, tuple[int, int, int, int]]: ...
    def kept_versions(self) -> dict[str, tuple[int, int, int]]: ...
    def pending_outbox(self) -> int | None: ...
    def prefill(self, n: int, name_prefix: str) -> dict[str, Any]: ...
