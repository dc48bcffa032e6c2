"""Kafka as tests read it: every record on a topic, and private brokers (scripts/kafka-local).

Where a helper takes `kafka`, it is a bootstrap address (a plaintext broker) or a
KafkaConnection (any broker, e.g. a secured one).
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

from service.events.kafka import KafkaConnection
from tests.support.paths import ROOT
from tests.support.ports import free_broker_port
from tests.support.waiting import poll_until


def connection_to(kafka: str | KafkaConnection) -> KafkaConnection:
    return kafka if isinstance(kafka, KafkaConnection) else KafkaConnection(kafka)


def client_options(kafka: str | KafkaConnection) -> dict[str, Any]:
    return {**connection_to(kafka).client_options(), "request_timeout_ms": 10000}


async def read_topic(
    kafka: str | KafkaConnection, topic: str, expected: int, timeout: float = 30.0
) -> list[Any]:
    """Every record on the topic, waiting until at least `expected` have arrived (or the timeout)."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic,
        **client_options(kafka),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
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


async def topic_snapshot(kafka: str | KafkaConnection, topic: str, timeout: float = 30.0) -> list[Any]:
    """Every record on the topic up to its current end offsets ([] while the topic does not exist)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    async with asyncio.timeout(timeout):
        admin_client = AIOKafkaAdminClient(**client_options(kafka))
        await admin_client.start()
        try:
            (described,) = await admin_client.describe_topics([topic])
        finally:
            await admin_client.close()
        if described["error_code"] != 0 or not described["partitions"]:
            return []
        partitions = [TopicPartition(topic, p["partition"]) for p in described["partitions"]]
        consumer = AIOKafkaConsumer(
            **client_options(kafka),
            group_id=None,
            enable_auto_commit=False,
            # Not only a seek: with the default ("latest") the fetcher may reset past our seek.
            auto_offset_reset="earliest",
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
    kafka: str | KafkaConnection,
    topic: str,
    done: Any,
    timeout: float = 60.0,
    what: str = "records on the topic",
) -> list[Any]:
    """Snapshots of the topic until `done(records)` is true; returns the records that satisfied it."""
    found: list[Any] = []

    async def check() -> bool:
        nonlocal found
        try:
            found = await topic_snapshot(kafka, topic)
        except (TimeoutError, OSError):
            return False
        return bool(done(found))

    await poll_until(check, timeout, interval=0.5, what=what)
    return found


def record_headers(record: Any) -> dict[str, str]:
    return {name: value.decode() for name, value in (record.headers or [])}


async def topic_partitions(kafka: str | KafkaConnection, topic: str) -> dict[int, dict[str, Any]]:
    """Partition -> its metadata from the admin API: `leader` (a node id, -1 while it has none),
    `replicas` and `isr` (node ids)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin_client = AIOKafkaAdminClient(**client_options(kafka))
    async with asyncio.timeout(30):
        await admin_client.start()
        try:
            (described,) = await admin_client.describe_topics([topic])
        finally:
            await admin_client.close()
    assert described["error_code"] == 0, (
        f"describing {topic} failed with error code {described['error_code']}"
    )
    return {p["partition"]: p for p in described["partitions"]}


class LocalBroker:
    """A private scripts/kafka-local broker (or cluster) on its own ports and data dir; `stop()` is safe to
    call always.

    mode "plain": one PLAINTEXT node; "secure": one SASL_SSL (SCRAM-SHA-512) node, whose client
    settings are `client_env()`; "cluster": three PLAINTEXT nodes, node K on port + K - 1.
    """

    def __init__(self, data_dir: Path, port: int | None = None, mode: str = "plain") -> None:
        assert mode in ("plain", "secure", "cluster"), mode
        self.mode = mode
        self.nodes = 3 if mode == "cluster" else 1
        self.port = port or free_broker_port(self.nodes)
        self.data_dir = data_dir
        self.address = ",".join(f"127.0.0.1:{self.port + k}" for k in range(self.nodes))

    def _run(self, action: str, *extra: str, timeout: float) -> str:
        done = subprocess.run(
            [
                str(ROOT / "scripts" / "kafka-local"),
                action,
                "--port",
                str(self.port),
                "--data",
                str(self.data_dir),
                *extra,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert done.returncode == 0, f"kafka-local {action} failed: {done.stderr[-2000:]}"
        return done.stdout

    def start(self) -> str:
        flags = {"plain": [], "secure": ["--secure"], "cluster": ["--brokers", "3"]}[self.mode]
        lines = self._run("start", *flags, timeout=300).strip().splitlines()
        assert lines and lines[-1] == self.address, f"unexpected kafka-local output: {lines[-1:]}"
        return self.address

    def stop(self) -> None:
        if self.data_dir.exists():
            self._run("stop", timeout=120)

    def stop_node(self, node: int, kill: bool = False) -> None:
        """Stop one node of a cluster: SIGTERM (a controlled shutdown), or SIGKILL with `kill`."""
        self._run("stop", "--node", str(node), *(["--kill"] if kill else []), timeout=120)

    def active_controller(self) -> int | None:
        """A cluster's active controller (the KRaft quorum leader), as the nodes' own logs last said."""
        for node in range(1, self.nodes + 1):
            log = self.data_dir / f"node-{node}" / "server.log"
            if not log.exists():
                continue
            with log.open("rb") as file:
                file.seek(max(0, log.stat().st_size - 4_000_000))
                transitions = [line for line in file if b"] Completed transition to " in line]
            if transitions and b"Completed transition to Leader(" in transitions[-1]:
                return node
        return None

    def client_env(self, user: str = "client") -> dict[str, str]:
        """A secure broker's KAFKA_* settings for its client user ("client") or its admin ("admin")."""
        path = self.data_dir / f"{user}.env"
        lines = path.read_text().splitlines()
        return dict(line.split("=", 1) for line in lines if "=" in line)

    def connection(self) -> KafkaConnection:
        """How a test itself reaches this broker."""
        if self.mode != "secure":
            return KafkaConnection(self.address)
        env = self.client_env()
        return KafkaConnection(
            self.address,
            security_protocol=env["KAFKA_SECURITY_PROTOCOL"],
            sasl_mechanism=env["KAFKA_SASL_MECHANISM"],
            sasl_username=env["KAFKA_SASL_USERNAME"],
            sasl_password=env["KAFKA_SASL_PASSWORD"],
            ssl_cafile=env["KAFKA_SSL_CAFILE"],
        )

    async def astart(self) -> str:
        return await asyncio.to_thread(self.start)

    async def astop(self) -> None:
        await asyncio.to_thread(self.stop)
