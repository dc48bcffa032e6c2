"""Kafka as tests read it: every record on a topic, and private brokers (scripts/kafka-local)."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

from tests.support.paths import ROOT
from tests.support.ports import free_broker_port
from tests.support.waiting import poll_until


async def read_topic(bootstrap: str, topic: str, expected: int, timeout: float = 30.0) -> list[Any]:
    """Every record on the topic, waiting until at least `expected` have arrived (or the timeout)."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        request_timeout_ms=10000,
    )
    await asyncio.wait_for(consumer.start(), 30)
    records: list[Any] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            batches = await consumer.getmany(timeout_ms=300)
            for batch in batches.values():
                records.extend(batch)
            if len(records) >= expected and not batches:
                break
    finally:
        await asyncio.wait_for(consumer.stop(), 30)
    return records


async def topic_snapshot(bootstrap: str, topic: str, timeout: float = 30.0) -> list[Any]:
    """Every record on the topic up to its current end offsets ([] while the topic does not exist)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    async with asyncio.timeout(timeout):
        admin_client = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
        await admin_client.start()
        try:
            (described,) = await admin_client.describe_topics([topic])
        finally:
            await admin_client.close()
        if described["error_code"] != 0 or not described["partitions"]:
            return []
        partitions = [TopicPartition(topic, p["partition"]) for p in described["partitions"]]
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=None,
            enable_auto_commit=False,
            # Not only a seek: with the default ("latest") the fetcher may reset past our seek.
            auto_offset_reset="earliest",
            request_timeout_ms=10000,
        )
        await consumer.start()
        try:
            consumer.assign(partitions)
            ends = await consumer.end_offsets(partitions)
            await consumer.seek_to_beginning(*partitions)
            records: list[Any] = []
            remaining = {tp for tp in partitions if ends[tp] > 0}
            while remaining:
                batches = await consumer.getmany(*remaining, timeout_ms=500)
                for tp, batch in batches.items():
                    records.extend(r for r in batch if r.offset < ends[tp])
                for tp in list(remaining):
                    if await consumer.position(tp) >= ends[tp]:
                        remaining.discard(tp)
        finally:
            await consumer.stop()
    return records


async def wait_for_records(
    bootstrap: str, topic: str, done: Any, timeout: float = 60.0, what: str = "records on the topic"
) -> list[Any]:
    """Snapshots of the topic until `done(records)` is true; returns the records that satisfied it."""
    found: list[Any] = []

    async def check() -> bool:
        nonlocal found
        try:
            found = await topic_snapshot(bootstrap, topic)
        except (TimeoutError, OSError):
            return False
        return bool(done(found))

    await poll_until(check, timeout, interval=0.5, what=what)
    return found


def record_headers(record: Any) -> dict[str, str]:
    return {name: value.decode() for name, value in (record.headers or [])}


class LocalBroker:
    """A private scripts/kafka-local broker on its own port and data dir; `stop()` is safe to call always."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.port = port or free_broker_port()
        self.data_dir = data_dir
        self.address = f"127.0.0.1:{self.port}"

    def _run(self, action: str, timeout: float) -> str:
        done = subprocess.run(
            [
                str(ROOT / "scripts" / "kafka-local"),
                action,
                "--port",
                str(self.port),
                "--data",
                str(self.data_dir),
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert done.returncode == 0, f"kafka-local {action} failed: {done.stderr[-2000:]}"
        return done.stdout

    def start(self) -> str:
        lines = self._run("start", timeout=240).strip().splitlines()
        assert lines and lines[-1] == self.address, f"unexpected kafka-local output: {lines[-1:]}"
        return self.address

    def stop(self) -> None:
        self._run("stop", timeout=120)

    async def astart(self) -> str:
        return await asyncio.to_thread(self.start)

    async def astop(self) -> None:
        await asyncio.to_thread(self.stop)
