"""The service's PostgreSQL database seen from outside the service: counts, the prefill (COPY).

The bench's own server (scripts/postgres-local, a port and data dir of its own) is
reached through psql, so the harness stays standard library only. Values put into
statements are the run's own (project id, prefixes), quoted as SQL literals.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import time
from typing import Any

from . import log
from .prefill import COUNTER_COLUMN, RowMaker


def literal(value: object) -> str:
    if isinstance(value, int):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


class Db:
    """Short, read-mostly looks at the service's PostgreSQL database, through psql."""

    name = "postgresql"

    def __init__(self, port: int, project_id: str, database: str = "secrets", user: str = "postgres") -> None:
        self.port = port
        self.project_id = project_id
        self.database = database
        self.user = user
        psql = shutil.which("psql")
        if psql is None:
            raise RuntimeError("psql not found (apt-get install postgresql-client)")
        self.psql = psql

    def query(self, sql: str, stdin: str | None = None, timeout: float = 600) -> list[list[str]]:
        """Rows of a statement, each a list of text fields (NULL is the empty string)."""
        out = subprocess.run(
            [self.psql, "-X", "-q", "-A", "-t", "-F", "\t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
             "-p", str(self.port), "-U", self.user, "-d", self.database, "-c", sql],
            input=stdin, capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
        if out.returncode != 0:
            raise RuntimeError(f"psql failed ({out.returncode}): {out.stderr.strip()[:2000]}\n{sql[:500]}")
        return [line.split("\t") for line in out.stdout.splitlines() if line]

    def scalar(self, sql: str) -> str:
        rows = self.query(sql)
        return rows[0][0] if rows else ""

    def describe(self) -> str:
        row = self.query(
            "SELECT current_setting('server_version'), current_setting('fsync'),"
            " current_setting('synchronous_commit'), current_setting('shared_buffers')"
        )[0]
        return (
            f"PostgreSQL {row[0]} on the same machine (fsync={row[1]}, synchronous_commit={row[2]}, "
            f"shared_buffers={row[3]})"
        )

    def _name_range(self, prefix: str) -> str:
        # names PREFIX_...: the range [PREFIX_, PREFIX`) uses the (project_id, name) index (name is COLLATE "C")
        return f"project_id = {literal(self.project_id)} AND name >= {literal(prefix + '_')} AND name < {literal(prefix + '`')}"

    def rows_with_prefix(self, prefix: str) -> int:
        return int(self.scalar(f"SELECT COUNT(*) FROM secrets WHERE {self._name_range(prefix)}"))

    def total_rows(self) -> int:
        return int(self.scalar("SELECT COUNT(*) FROM secrets"))

    def service_secret_ids(self, prefill_prefix: str) -> set[str]:
        """Ids of the project's secrets, except the prefilled ones (names PREFILL_PREFIX_...)."""
        rows = self.query(
            f"SELECT id FROM secrets WHERE project_id = {literal(self.project_id)}"
            f" AND NOT ({self._name_range(prefill_prefix)})"
        )
        return {row[0] for row in rows}

    def versions_with_prefix(self, prefix: str) -> dict[str, int]:
        """id -> current version of the secrets named PREFIX_..."""
        rows = self.query(f"SELECT id, version FROM secrets WHERE {self._name_range(prefix)}")
        return {row[0]: int(row[1]) for row in rows}

    def last_seq(self) -> int:
        return int(self.scalar("SELECT COALESCE(MAX(seq), 0) FROM outbox"))

    def events_after(self, seq: int, event_type: str, request_prefix: str) -> tuple[int, int]:
        """(events, distinct request ids) of this type after seq whose requestId starts with request_prefix.

        Sequence values are taken in order, so every event of a round that starts after
        seq was read has a higher one, whenever it commits.
        """
        row = self.query(
            "SELECT COUNT(*), COUNT(DISTINCT r) FROM (SELECT payload::json ->> 'requestId' AS r FROM outbox"
            f" WHERE seq > {literal(seq)} AND event_type = {literal(event_type)}) AS e"
            f" WHERE left(r, {len(request_prefix)}) = {literal(request_prefix)}"
        )[0]
        return int(row[0]), int(row[1])

    def outbox_events(self) -> list[tuple[str, str]]:
        return [(row[0], row[1]) for row in self.query("SELECT event_id, event_type FROM outbox")]

    def updated_event_versions(self) -> dict[str, tuple[int, int, int, int]]:
        """subject -> (secret.updated events, distinct versions, lowest, highest version)."""
        rows = self.query(
            "SELECT subject, COUNT(*), COUNT(DISTINCT v), MIN(v), MAX(v) FROM (SELECT subject,"
            " (payload::json ->> 'version')::int AS v FROM outbox WHERE event_type = 'secret.updated') AS e"
            " GROUP BY subject"
        )
        return {row[0]: (int(row[1]), int(row[2]), int(row[3]), int(row[4])) for row in rows}

    def kept_versions(self) -> dict[str, tuple[int, int, int]]:
        """secret_id -> (previous versions kept, lowest, highest)."""
        rows = self.query(
            "SELECT secret_id, COUNT(*), MIN(version), MAX(version) FROM secret_versions GROUP BY secret_id"
        )
        return {row[0]: (int(row[1]), int(row[2]), int(row[3])) for row in rows}

    def pending_outbox(self) -> int | None:
        """Events not yet relayed (replicas mark each row published); None if there is no outbox yet."""
        if not self.scalar("SELECT to_regclass('outbox')"):
            return None
        return int(self.scalar("SELECT COUNT(*) FROM outbox WHERE published_at IS NULL"))

    def prefill(self, n: int, name_prefix: str) -> dict[str, Any]:
        return prefill(self, n, name_prefix)


# --------------------------------------------------------------------------- prefill

_INTEGER_TYPES = ("smallint", "integer", "bigint")


def prefill(db: Db, n: int, name_prefix: str, batch: int = 100_000) -> dict[str, Any]:
    """Insert n secrets into the bench project with COPY, shaped like a service-made row.

    As the SQLite prefill does: the columns and their types come from
    information_schema at run time, the values from a row the service created in this
    run (prefill.RowMaker), serial or identity columns are left to PostgreSQL, and
    per-project counters equal to the row count are advanced. Each batch is one COPY
    (one transaction); then VACUUM ANALYZE, so the planner knows the table and
    autovacuum has nothing to catch up on during the rounds, and a CHECKPOINT: the
    load's WAL otherwise starts one that runs through the rounds (89 s, from the
    prefill to the end of the last round, in one run), and the first write to each
    page after its start logs the whole page. The rounds measure the million rows,
    not the load's aftermath.
    """
    t0 = time.monotonic()
    notes: list[str] = []
    info = db.query(
        "SELECT column_name, data_type, COALESCE(column_default, ''), is_identity FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND table_name = 'secrets' ORDER BY ordinal_position"
    )
    types = {row[0]: row[1] for row in info}
    generated = [row[0] for row in info if row[2].startswith("nextval(") or row[3] == "YES"]
    cols = [row[0] for row in info if row[0] not in generated]
    if generated:
        notes.append(f"serial/identity columns {generated} left to PostgreSQL")
    found = db.query(
        f"SELECT row_to_json(s)::text FROM secrets s WHERE project_id = {literal(db.project_id)}"
        " ORDER BY created_at DESC, id DESC LIMIT 1"
    )
    if not found:
        raise RuntimeError("no service-created secret to use as a template for the prefill")
    template: dict[str, Any] = json.loads(found[0][0])
    for c, t in types.items():
        if t == "bytea" and isinstance(template.get(c), str):
            template[c] = bytes.fromhex(template[c].removeprefix("\\x"))
    # columns of unique indexes that neither id nor name make unique already
    extra_unique: set[str] = set()
    for (index_cols,) in db.query(
        "SELECT string_agg(a.attname, ',') FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid"
        " AND a.attnum = ANY(i.indkey) WHERE i.indrelid = 'secrets'::regclass AND i.indisunique"
        " GROUP BY i.indexrelid"
    ):
        idx_cols = set(index_cols.split(","))
        if not idx_cols & {"id", "name"}:
            extra_unique |= idx_cols - {"project_id"}
    if extra_unique:
        notes.append(f"made unique per row: {sorted(extra_unique)}")

    project = literal(db.project_id)
    before_count = int(db.scalar(f"SELECT COUNT(*) FROM secrets WHERE project_id = {project}"))
    counters: list[tuple[str, str, str, int]] = []  # table, key column, counter column, value
    table_cols: dict[str, list[tuple[str, str]]] = {}
    for table, column, data_type in db.query(
        "SELECT table_name, column_name, data_type FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND table_name <> 'secrets' ORDER BY table_name, ordinal_position"
    ):
        table_cols.setdefault(table, []).append((column, data_type))
    for table, tcols in table_cols.items():
        names = {c for c, _ in tcols}
        key = "id" if table == "projects" else ("project_id" if "project_id" in names else None)
        if key is None:
            continue
        for column, data_type in tcols:
            if data_type in _INTEGER_TYPES and COUNTER_COLUMN.search(column) and column != key:
                rows = db.query(f"SELECT {column} FROM {table} WHERE {key} = {project}")
                if not rows:
                    continue
                value = int(rows[0][0])
                if value == before_count:
                    counters.append((table, key, column, value))
                else:
                    notes.append(
                        f"{table}.{column} = {value} does not equal the secret count {before_count}; left alone"
                    )
    triggers = [row[0] for row in db.query("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal")]

    blob = next((template[c] for c in cols if isinstance(template.get(c), bytes)), None)
    maker = RowMaker(cols, template, db.project_id, name_prefix, n, extra_unique)
    copy = f"COPY secrets ({', '.join(cols)}) FROM STDIN WITH (FORMAT csv)"
    for start in range(0, n, batch):
        buf = io.StringIO()
        out = csv.writer(buf, lineterminator="\n")
        for i in range(start, min(n, start + batch)):
            out.writerow(
                ["" if v is None else ("\\x" + v.hex()) if isinstance(v, bytes) else v for v in maker.row(i)]
            )
        db.query(copy, stdin=buf.getvalue())
        log(f"  prefilled {min(n, start + batch):,}/{n:,}")
    after_count = int(db.scalar(f"SELECT COUNT(*) FROM secrets WHERE project_id = {project}"))
    adjusted = []
    for table, key, column, value in counters:
        now_value = int(db.scalar(f"SELECT {column} FROM {table} WHERE {key} = {project}"))
        if now_value == after_count:
            notes.append(f"{table}.{column} already advanced (trigger)")
            continue
        db.query(f"UPDATE {table} SET {column} = {after_count} WHERE {key} = {project}")
        adjusted.append(f"{table}.{column}: {value} -> {after_count}")
    db.query("VACUUM ANALYZE secrets")
    db.query("CHECKPOINT")
    return {
        "rows": n,
        "seconds": round(time.monotonic() - t0, 1),
        "columns": cols,
        "sealed_value_bytes": len(blob) if isinstance(blob, bytes) else None,
        "counters_adjusted": adjusted,
        "triggers": triggers,
        "notes": notes,
        "project_rows_after": after_count,
        "db_bytes": int(db.scalar("SELECT pg_database_size(current_database())")),
    }
