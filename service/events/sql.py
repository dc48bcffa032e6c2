"""Statements on the outbox.

Which rows are published is kept one of two ways. With a single writer, seq order
is commit order, so one cursor row (relay_progress) says how far the relay got:
publishing writes one small row, not every published row again. With concurrent
writers (replicas on PostgreSQL) rows commit out of seq order, so each is marked.
"""

from __future__ import annotations

from collections.abc import Sequence

from service.db.plan import Execute, Fetch
from service.events.model import OutboxEvent

EVENT_COLUMNS = ("seq", "event_id", "event_type", "subject", "payload", "created_at")
_COLUMNS = ", ".join(EVENT_COLUMNS)


def insert_events(events: Sequence[OutboxEvent]) -> Execute:
    return Execute(
        "INSERT INTO outbox (event_id, event_type, subject, payload, created_at)"
        f" VALUES {', '.join(['(?, ?, ?, ?, ?)'] * len(events))}",
        [value for e in events for value in (e.event_id, e.event_type, e.subject, e.payload, e.created_at)],
    )


# Marked rows (concurrent writers)


def unmarked_events(limit: int) -> Fetch:
    """Unpublished events in seq order, as rows of EVENT_COLUMNS."""
    return Fetch(f"SELECT {_COLUMNS} FROM outbox WHERE published_at IS NULL ORDER BY seq LIMIT ?", (limit,))


def mark_published(seqs: Sequence[int], published_at: str) -> Execute:
    # One statement for the whole round, not one per row.
    return Execute(
        f"UPDATE outbox SET published_at = ? WHERE seq IN ({', '.join('?' * len(seqs))})",
        (published_at, *seqs),
    )


def prune_marked(before: str, limit: int) -> Execute:
    """Delete up to `limit` of the events published before `before`."""
    return Execute(
        "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox"
        " WHERE published_at IS NOT NULL AND published_at < ? ORDER BY published_at LIMIT ?)",
        (before, limit),
    )


def count_unmarked() -> Fetch:
    return Fetch("SELECT COUNT(*) FROM outbox WHERE published_at IS NULL")


def unmarked_backlog() -> Fetch:
    """(how many, created_at of the oldest) of the unpublished events."""
    return Fetch("SELECT COUNT(*), MIN(created_at) FROM outbox WHERE published_at IS NULL")


# A cursor (single writer)


def published_through() -> Fetch:
    """The seq up to which every event is published."""
    return Fetch("SELECT published_seq FROM relay_progress WHERE id = 1")


def events_after(seq: int, limit: int) -> Fetch:
    """Events committed after seq, in commit order, as rows of EVENT_COLUMNS."""
    return Fetch(
        f"SELECT {_COLUMNS} FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
        (seq, limit),
        packed=EVENT_COLUMNS,
    )


def advance_published_through(seq: int) -> Execute:
    return Execute(
        "UPDATE relay_progress SET published_seq = ? WHERE id = 1 AND published_seq < ?", (seq, seq)
    )


def prune_published_through(before: str, limit: int) -> Execute:
    """Delete up to `limit` of the oldest published events created before `before`.

    Walks the oldest rows by seq only, so a prune with nothing to do costs almost nothing.
    """
    return Execute(
        "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox ORDER BY seq LIMIT ?)"
        " AND created_at < ? AND seq <= (SELECT published_seq FROM relay_progress WHERE id = 1)",
        (limit, before),
    )


def count_after_cursor() -> Fetch:
    return Fetch(
        "SELECT COUNT(*) FROM outbox WHERE seq > (SELECT published_seq FROM relay_progress WHERE id = 1)"
    )


def backlog_after(seq: int) -> Fetch:
    """(how many, created_at of the oldest) of the events after seq."""
    return Fetch("SELECT COUNT(*), MIN(created_at) FROM outbox WHERE seq > ?", (seq,))
