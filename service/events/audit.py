"""The reference consumer: reads secret events as a consumer group, appends one JSON line per event.

Delivery is at least once, so it drops events whose id it has already written,
including ids written before a restart (it reads its own log back at start).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer

from service.events.faults import KafkaFailure, explain, kafka_log_watch
from service.events.kafka import KafkaConnection

logger = logging.getLogger("service.events")


def _seen_ids(path: Path) -> set[str]:
    seen: set[str] = set()
    if path.exists():
        with path.open(encoding="utf-8") as log:
            for line in log:
                try:
                    seen.add(json.loads(line)["id"])
                except (ValueError, KeyError):
                    continue
    return seen


def audit_line(record: Any) -> dict[str, Any]:
    headers = {key: value.decode() for key, value in (record.headers or [])}
    return {
        "id": headers.get("ce_id"),
        "type": headers.get("ce_type"),
        "source": headers.get("ce_source"),
        "time": headers.get("ce_time"),
        "subject": headers.get("ce_subject"),
        "partition": record.partition,
        "offset": record.offset,
        "data": json.loads(record.value),
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
    seen = _seen_ids(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    watch = kafka_log_watch()
    consumer = AIOKafkaConsumer(
        topic,
        **connection.consumer_options(),
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    started = time.monotonic()
    try:
        await asyncio.wait_for(consumer.start(), 30)
    except Exception as exc:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(consumer.stop(), 5)
        raise KafkaFailure(explain(exc, connection, started)) from exc
    watch.report_with(connection)  # from now on the consumer reconnects by itself: faults are only reported
    logger.info("consuming %s from Kafka at %s as group %s", topic, connection.for_logs, group_id)
    written = 0
    last_event = time.monotonic()
    try:
        with output.open("a", encoding="utf-8") as log:
            while idle_exit_seconds is None or time.monotonic() - last_event < idle_exit_seconds:
                batches = await consumer.getmany(timeout_ms=500, max_records=1000)
                if not batches:
                    continue
                last_event = time.monotonic()
                for records in batches.values():
                    for record in records:
                        line = audit_line(record)
                        if line["id"] is None or line["id"] in seen:
                            continue
                        seen.add(line["id"])
                        log.write(json.dumps(line, separators=(",", ":")) + "\n")
                        written += 1
                log.flush()
                os.fsync(log.fileno())
                # Offsets are committed only after the lines are on disk: a crash re-reads, never skips.
                await asyncio.wait_for(consumer.commit(), 30)
    finally:
        await asyncio.wait_for(consumer.stop(), 30)
    return written
