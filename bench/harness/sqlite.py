"""The service's SQLite file seen from outside the service: row and outbox counts, the prefill."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from . import log
from .prefill import COUNTER_COLUMN, RowMaker


class Db:
    """Short, read-mostly looks at the service's SQLite file from outside the service."""

    name = "sqlite"

    def __init__(self, path: Path, project_id: str) -> None:
        self.path = path
        self.project_id = project_id

    def describe(self) -> str:
        return f"SQLite {sqlite3.sqlite_version} `synchronous=FULL`"

    def connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        con.execute("PRAGMA busy_timeout=30000")
        return con

    def scalar(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        con = self.connect()
        try:
            return con.execute(sql, params).fetchone()[0]
        finally:
            con.close()

    def columns(self, table: str) -> list[str]:
        con = self.connect()
        try:
            return [row[1] for row in con.execute(f"PRAGMA table_info({table})")]
        finally:
            con.close()

    def rows_with_prefix(self, prefix: str) -> int:
        # names PREFIX_...: the range [PREFIX_, PREFIX`) uses the (project_id, name) index
        return int(
            self.scalar(
                "SELECT COUNT(*) FROM secrets WHERE project_id = ? AND name >= ? AND name < ?",
                (self.project_id, prefix + "_", prefix + "`"),
            )
        )

    def total_rows(self) -> int:
        return int(self.scalar("SELECT COUNT(*) FROM secrets"))

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        con = self.connect()
        try:
            return con.execute(sql, params).fetchall()
        finally:
            con.close()

    def service_secret_ids(self, prefill_prefix: str) -> set[str]:
        """Ids of the project's secrets, except the prefilled ones (names PREFILL_PREFIX_...)."""
        return {
            row[0]
            for row in self.rows(
                "SELECT id FROM secrets WHERE project_id = ? AND NOT (name >= ? AND name < ?)",
                (self.project_id, prefill_prefix + "_", prefill_prefix + "`"),
            )
        }

    def versions_with_prefix(self, prefix: str) -> dict[str, int]:
        """id -> current version of the secrets named PREFIX_..."""
        return dict(
            self.rows(
                "SELECT id, version FROM secrets WHERE project_id = ? AND name >= ? AND name < ?",
                (self.project_id, prefix + "_", prefix + "`"),
            )
        )

    def last_seq(self) -> int:
        return int(self.scalar("SELECT COALESCE(MAX(seq), 0) FROM outbox"))

    def events_after(self, seq: int, event_type: str, request_prefix: str) -> tuple[int, int]:
        """(events, distinct request ids) of this type after seq whose requestId starts with request_prefix."""
        row = self.rows(
            "SELECT COUNT(*), COUNT(DISTINCT r) FROM (SELECT json_extract(payload, '$.requestId') AS r"
            " FROM outbox WHERE seq > ? AND event_type = ?) WHERE substr(r, 1, ?) = ?",
            (seq, event_type, len(request_prefix), request_prefix),
        )[0]
        return int(row[0]), int(row[1])

    def outbox_events(self) -> list[tuple[str, str]]:
        """(event_id, event_type) of every event in the outbox."""
        return self.rows("SELECT event_id, event_type FROM outbox")  # type: ignore[return-value]

    def updated_event_versions(self) -> dict[str, tuple[int, int, int, int]]:
        """subject -> (secret.updated events, distinct versions, lowest, highest version)."""
        return {
            row[0]: (row[1], row[2], row[3], row[4])
            for row in self.rows(
                "SELECT subject, COUNT(*), COUNT(DISTINCT v), MIN(v), MAX(v) FROM (SELECT subject,"
                " json_extract(payload, '$.version') AS v FROM outbox WHERE event_type = 'secret.updated')"
                " GROUP BY subject"
            )
        }

    def kept_versions(self) -> dict[str, tuple[int, int, int]]:
        """secret_id -> (previous versions kept, lowest, highest)."""
        return {
            row[0]: (row[1], row[2], row[3])
            for row in self.rows(
                "SELECT secret_id, COUNT(*), MIN(version), MAX(version) FROM secret_versions GROUP BY secret_id"
            )
        }

    def prefill(self, n: int, name_prefix: str) -> dict[str, Any]:
        return prefill(self, n, name_prefix)

    def pending_outbox(self) -> int | None:
        """Events not yet relayed, whatever the outbox looks like; None if there is no outbox table."""
        cols = self.columns("outbox")
        if not cols:
            return None
        if self.columns("relay_progress"):  # the relay's cursor (service schema v2 on SQLite)
            return int(
                self.scalar(
                    "SELECT COUNT(*) FROM outbox WHERE seq > (SELECT published_seq FROM relay_progress)"
                )
            )
        if "published_at" in cols:
            return int(self.scalar("SELECT COUNT(*) FROM outbox WHERE published_at IS NULL"))
        return int(self.scalar("SELECT COUNT(*) FROM outbox"))


# --------------------------------------------------------------------------- prefill


def prefill(db: Db, n: int, name_prefix: str, batch: int = 100_000) -> dict[str, Any]:
    """Insert n secrets into the bench project straight into SQLite, shaped like a service-made row.

    The schema is read at run time: columns come from PRAGMA table_info(secrets), values
    from a row the service created in this run (the template; see prefill.RowMaker for
    what is made per row). Counter columns per project (in projects, or any table with a
    project_id) that equal the current number of secrets are advanced by n, unless a
    trigger already did so.
    """
    t0 = time.monotonic()
    con = db.connect()
    notes: list[str] = []
    try:
        con.execute("PRAGMA synchronous=NORMAL")
        info = con.execute("PRAGMA table_info(secrets)").fetchall()
        cols = [r[1] for r in info]
        pk_int = [r[1] for r in info if r[5] and "INT" in (r[2] or "").upper()]
        template_row = con.execute(
            f"SELECT {', '.join(cols)} FROM secrets WHERE project_id = ? ORDER BY rowid DESC LIMIT 1",
            (db.project_id,),
        ).fetchone()
        if template_row is None:
            raise RuntimeError("no service-created secret to use as a template for the prefill")
        template = dict(zip(cols, template_row, strict=True))
        # unique indexes that neither id nor name make unique already
        extra_unique: set[str] = set()
        for idx in con.execute("PRAGMA index_list(secrets)").fetchall():
            if not idx[2]:
                continue
            idx_cols = {r[2] for r in con.execute(f"PRAGMA index_info('{idx[1]}')")}
            if not idx_cols & {"id", "name"}:
                extra_unique |= idx_cols - {"project_id"}
        insert_cols = [c for c in cols if c not in pk_int]
        if pk_int:
            notes.append(f"integer primary key {pk_int} left to SQLite")
        if extra_unique:
            notes.append(f"made unique per row: {sorted(extra_unique)}")

        # counters before
        before_count = con.execute(
            "SELECT COUNT(*) FROM secrets WHERE project_id = ?", (db.project_id,)
        ).fetchone()[0]
        counters: list[tuple[str, str, str, int]] = []  # table, key column, counter column, value
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            if table == "secrets" or table.startswith("sqlite_"):
                continue
            tinfo = con.execute(f"PRAGMA table_info({table})").fetchall()
            tcols = {r[1] for r in tinfo}
            key = "id" if table == "projects" else ("project_id" if "project_id" in tcols else None)
            if key is None:
                continue
            for r in tinfo:
                if "INT" in (r[2] or "").upper() and COUNTER_COLUMN.search(r[1]) and r[1] != key:
                    row = con.execute(
                        f"SELECT {r[1]} FROM {table} WHERE {key} = ?", (db.project_id,)
                    ).fetchone()
                    if row is None:
                        continue
                    if row[0] == before_count:
                        counters.append((table, key, r[1], row[0]))
                    else:
                        notes.append(
                            f"{table}.{r[1]} = {row[0]} does not equal the secret count {before_count}; left alone"
                        )
        triggers = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")]

        blob = template.get("sealed_value")
        maker = RowMaker(insert_cols, template, db.project_id, name_prefix, n, extra_unique)
        placeholders = ", ".join("?" for _ in insert_cols)
        sql = f"INSERT INTO secrets ({', '.join(insert_cols)}) VALUES ({placeholders})"
        for start in range(0, n, batch):
            rows = [maker.row(i) for i in range(start, min(n, start + batch))]
            con.execute("BEGIN IMMEDIATE")
            con.executemany(sql, rows)
            con.execute("COMMIT")
            log(f"  prefilled {min(n, start + batch):,}/{n:,}")
        after_count = con.execute(
            "SELECT COUNT(*) FROM secrets WHERE project_id = ?", (db.project_id,)
        ).fetchone()[0]
        adjusted = []
        for table, key, col, value in counters:
            now_value = con.execute(
                f"SELECT {col} FROM {table} WHERE {key} = ?", (db.project_id,)
            ).fetchone()[0]
            if now_value == after_count:
                notes.append(f"{table}.{col} already advanced (trigger)")
                continue
            con.execute(f"UPDATE {table} SET {col} = ? WHERE {key} = ?", (after_count, db.project_id))
            adjusted.append(f"{table}.{col}: {value} -> {after_count}")
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        con.close()
    return {
        "rows": n,
        "seconds": round(time.monotonic() - t0, 1),
        "columns": insert_cols,
        "sealed_value_bytes": len(blob) if isinstance(blob, bytes) else None,
        "counters_adjusted": adjusted,
        "triggers": triggers,
        "notes": notes,
        "project_rows_after": after_count,
        "db_bytes": db.path.stat().st_size,
    }
