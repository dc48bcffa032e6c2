"""An event as the outbox holds it, and as CloudEvents (Kafka binary mode) carries it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from service import ids

SPECVERSION = "1.0"


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    """One event row: `payload` is the record value (JSON), `subject` the record key."""

    event_id: str
    event_type: str
    subject: str
    payload: str
    created_at: str
    seq: int = 0


def new_event(event_type: str, subject: str, data: dict[str, Any], at: str) -> OutboxEvent:
    """An event with a fresh, time-ordered id (UUIDv7: the outbox's unique index takes it at its end)."""
    return OutboxEvent(
        event_id=ids.uuid7(),
        event_type=event_type,
        subject=subject,
        payload=orjson.dumps(data).decode(),
        created_at=at,
    )


def kafka_headers(event: OutboxEvent, source: str) -> list[tuple[str, bytes]]:
    """CloudEvents attributes as `ce_` headers (with the `partitionkey` extension: the record key), and
    the data's media type."""
    return [
        ("ce_specversion", SPECVERSION.encode()),
        ("ce_id", event.event_id.encode()),
        ("ce_source", source.encode()),
        ("ce_type", event.event_type.encode()),
        ("ce_time", event.created_at.encode()),
        ("ce_subject", event.subject.encode()),
        ("ce_partitionkey", event.subject.encode()),
        ("content-type", b"application/json"),
    ]
