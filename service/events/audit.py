"""The reference consumer: appends one JSON line per secret event to an audit log.

It is built on the client's typed consumer (`secrets_client.events.SecretEvents`), as a
consumer group: malformed records are logged and skipped, repeats are dropped by
(ce_source, ce_id), including ids written before a restart (it reads its own log back at
start), and offsets are committed only after the lines are on disk.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from secrets_client.events import AnyEvent, SecretEvents

from service.events.faults import KafkaFailure, explain, kafka_log_watch
from service.events.kafka import KafkaConnection

logger = logging.getLogger("service.events")


def _seen(path: Path) -> set[tuple[str, str]]:
    """(source, id) of every event already in the log."""
    seen: set[tuple[str, str]] = set()
    if path.exists():
        with path.open(encoding="utf-8") as log:
            for line in log:
                try:
                    entry = json.loads(line)
                    seen.add((entry["source"], entry["id"]))
                except (ValueError, KeyError, TypeError):
                    continue
    return seen


def audit_line(event: AnyEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "type": event.type,
        "source": event.source,
        "time": event.time.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "subject": event.subject,
        "partition": event.partition,
        "offset": event.offset,
        "data": dict(event.data),
    }


async def consume(
    connection: KafkaConnection,
    topic: str,
    output: Path,
    group_id: str,
    idle_exit_seconds: float | None = None,
) -> int:
    """Consume until cancelled (or idle for idle_exit_seconds); returns how many new events were written.

    Raises KafkaFailure, naming the cause, when it cannot join the cluster at start. Later
    connection faults are logged by the Kafka log watch, at most once per cause per 30 s,
    while the consumer reconnects by itself.
    """
    seen = _seen(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    watch = kafka_log_watch()
    events = SecretEvents(
        connection.bootstrap_servers,
        topic,
        group_id,
        seen=seen,
        remember=None,
        poll_seconds=0.5,
        **connection.consumer_options(),
    )
    async with contextlib.AsyncExitStack() as stack:
        started = time.monotonic()
        try:
            await stack.enter_async_context(events)
        except Exception as exc:
            raise KafkaFailure(explain(exc, connection, started)) from exc
        watch.report_with(
            connection
        )  # from now on the consumer reconnects by itself: faults are only reported
        logger.info("consuming %s from Kafka at %s as group %s", topic, connection.for_logs, group_id)
        last_event = time.monotonic()
        with output.open("a", encoding="utf-8") as log:
            async for batch in events.batches():
                if not batch:
                    if idle_exit_seconds is not None and time.monotonic() - last_event >= idle_exit_seconds:
                        break
                    continue
                last_event = time.monotonic()
                for event in batch:
                    log.write(json.dumps(audit_line(event), separators=(",", ":")) + "\n")
                    written += 1
                log.flush()
                # The batch counts as handled (its offsets committed) only once these lines are on disk.
                os.fsync(log.fileno())
    return written
