"""Real `secrets-service serve` processes under crashes, broker outages and restarts: no event is lost.

Each test runs the service as a subprocess on a free port with a SQLite file in its
tmp_path, drives it over HTTP, and checks the Kafka topic itself. Every process a
test starts (service or private broker) is stopped at teardown, also on failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.crypto import generate_master_key_entry
from service.events.relay import CursorProgress
from tests.support.kafka import LocalBroker, record_headers, wait_for_records
from tests.support.leaks import CANARY, leaked
from tests.support.service import (
    GRACEFUL_SECONDS,
    UNANSWERED,
    Deployment,
    DeploymentFactory,
    Outcome,
    assert_every_stored_secret_has_its_event,
    drive_creates,
    executable,
)
from tests.support.waiting import poll_until

pytestmark = [pytest.mark.slow, pytest.mark.kafka]


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[LocalBroker]:
    """A broker of this test's own on a free port pair, not started; stopped at teardown whatever happened."""
    broker = LocalBroker(tmp_path / "kafka")
    try:
        yield broker
    finally:
        broker.stop()


@pytest.mark.parametrize("kafka_during_load", ["up", "down"])
async def test_sigkill_mid_load_loses_no_event(
    deploy: DeploymentFactory, kafka_bootstrap: str, kafka_during_load: str
) -> None:
    # "down": every event of the load is still in the outbox when the process dies.
    first_bootstrap = kafka_bootstrap if kafka_during_load == "up" else "127.0.0.1:9"
    deployment: Deployment = await deploy(first_bootstrap)
    service = deployment.service
    await service.start_healthy()
    killed_at: list[float] = []

    def kill_partway(outcomes: list[Outcome]) -> None:
        if not killed_at and sum(o.status == 201 for o in outcomes) >= 100:
            service.send(signal.SIGKILL)
            killed_at.append(time.monotonic())

    names = [f"KILL_{i}" for i in range(300)]
    outcomes = await drive_creates(deployment, names, concurrency=32, on_outcome=kill_partway)
    statuses = {o.status for o in outcomes if o.error is None}
    assert statuses == {201}, f"unexpected statuses {statuses}"
    assert killed_at, "the load finished before the kill"
    assert await service.wait_exit(30) == -signal.SIGKILL
    answered = {o.secret_id for o in outcomes if o.status == 201}
    assert any(o.error is not None for o in outcomes), "no request was cut off by the kill"
    if kafka_during_load == "down":
        assert service.pending_events() >= len(answered), "events of answered creates are not in the outbox"

    service.env["KAFKA_BOOTSTRAP_SERVERS"] = kafka_bootstrap
    await service.start_healthy()
    listed, _ = await assert_every_stored_secret_has_its_event(deployment, kafka_bootstrap)
    missing = answered - {s["id"] for s in listed}
    assert not missing, f"{len(missing)} secrets answered 201 before the kill are gone"
    await service.stop()
    deployment.assert_logs_clean()


async def test_sigkill_mid_read_load_leaves_no_answered_value_unaudited(
    deploy: DeploymentFactory, kafka_bootstrap: str
) -> None:
    """Every 200 value answer has exactly one secret.accessed event, also when the process is killed mid-load."""
    deployment: Deployment = await deploy(kafka_bootstrap)
    service = deployment.service
    await service.start_healthy()
    names = [f"READ_{i}" for i in range(20)]
    assert {o.status for o in await drive_creates(deployment, names, concurrency=4)} == {201}
    answered: list[str] = []
    cut_off: list[type[BaseException]] = []

    async with httpx.AsyncClient(base_url=service.url, timeout=30) as http:

        async def reader(worker: int) -> None:
            for i in range(10_000):
                request_id = f"r{worker}-{i}"
                try:
                    response = await http.get(
                        f"/api/secrets/by-name/{names[i % len(names)]}/value",
                        headers={**deployment.headers, "X-Request-ID": request_id},
                    )
                except UNANSWERED as exc:
                    cut_off.append(type(exc))
                    return
                assert response.status_code == 200, response.text
                assert response.headers["x-request-id"] == request_id
                answered.append(request_id)
                if len(answered) == 300:
                    service.send(signal.SIGKILL)

        async with asyncio.timeout(120):
            await asyncio.gather(*(reader(w) for w in range(16)))
    assert await service.wait_exit(30) == -signal.SIGKILL
    assert cut_off, "no read was cut off by the kill"

    await service.start_healthy()

    def audited(records: list[Any]) -> dict[str, set[str]]:
        by_request: dict[str, set[str]] = {}
        for record in records:
            if record_headers(record).get("ce_type") == "secret.accessed":
                by_request.setdefault(json.loads(record.value)["requestId"], set()).add(
                    record_headers(record)["ce_id"]
                )
        return by_request

    records = await wait_for_records(
        kafka_bootstrap,
        deployment.topic,
        lambda rs: set(answered) <= set(audited(rs)),
        timeout=90,
        what=f"secret.accessed events for all {len(answered)} answered reads",
    )
    events = audited(records)
    assert all(len(events[request_id]) == 1 for request_id in answered), "a read has several distinct events"
    await service.stop()
    deployment.assert_logs_clean()


async def test_broker_outage_during_creates_loses_no_event(
    deploy: DeploymentFactory, private_broker: LocalBroker
) -> None:
    bootstrap = await private_broker.astart()
    deployment: Deployment = await deploy(bootstrap, KAFKA_TIMEOUT_SECONDS="3")
    service = deployment.service
    await service.start_healthy()

    stop_load = asyncio.Event()
    names = [f"OUTAGE_{i}" for i in range(20000)]  # more than the load will use: it runs until stopped
    outcomes: list[Outcome] = []
    load = asyncio.create_task(
        drive_creates(
            deployment,
            names,
            concurrency=2,
            pause=0.05,
            stop=stop_load,
            outcomes=outcomes,
            timeout=600,  # stopped by stop_load; each broker start/stop below is bounded itself
        )
    )
    try:

        def answered_since(t: float) -> int:
            return sum(1 for o in outcomes if o.at > t and o.status == 201)

        # Before the outage: events flow.
        await wait_for_records(bootstrap, deployment.topic, lambda rs: len(rs) >= 10, timeout=60)
        await private_broker.astop()
        down_since = time.monotonic()
        await poll_until(lambda: answered_since(down_since) >= 20, 60, what="creates while Kafka is down")
        down_until = time.monotonic()
        assert service.pending_events() > 0, "nothing waits in the outbox: was the broker really down?"
        await private_broker.astart()
        up_since = time.monotonic()
        await poll_until(lambda: answered_since(up_since) >= 10, 60, what="creates after Kafka is back")
    finally:
        stop_load.set()
        done = await load
    assert done, "no creates at all"
    statuses = [o.status for o in done]
    assert set(statuses) == {201}, f"creates failed around the outage: {sorted(set(map(str, statuses)))}"
    during = [o for o in done if down_since < o.at < down_until]
    assert len(during) >= 20

    listed, records = await assert_every_stored_secret_has_its_event(deployment, bootstrap)
    assert {s["id"] for s in listed} == {o.secret_id for o in done}
    # Kafka keeps each secret's events in one partition.
    partitions: dict[bytes, set[int]] = {}
    for record in records:
        partitions.setdefault(record.key, set()).add(record.partition)
    assert all(len(p) == 1 for p in partitions.values())
    await service.stop()
    deployment.assert_logs_clean()

    # The outage is told once when it starts (with its cause) and once when it ends; aiokafka's
    # reconnection attempts (about a hundred lines a second before) stay out of the log.
    lines = service.log_text().decode().splitlines()
    started = [line for line in lines if "Kafka unavailable: " in line]
    assert len(started) == 1, started
    assert "Kafka broker unreachable at " in started[0] and "connection refused" in started[0], started[0]
    assert len([line for line in lines if "Kafka available again after " in line]) == 1
    aiokafka = [line for line in lines if " aiokafka" in line]
    assert len(aiokafka) <= 10, f"{len(aiokafka)} aiokafka lines around one outage:\n" + "\n".join(
        aiokafka[:20]
    )
    assert not [line for line in lines if "never retrieved" in line], "a failed send's error went unhandled"
    noisy = [line for line in lines if " WARNING " in line or " ERROR " in line]
    assert len(noisy) <= 12, f"{len(noisy)} warnings and errors around one outage:\n" + "\n".join(noisy[:20])


async def test_sigterm_drains_requests_and_exits_cleanly(
    deploy: DeploymentFactory, kafka_bootstrap: str
) -> None:
    deployment: Deployment = await deploy(kafka_bootstrap, RELAY_SHUTDOWN_SECONDS="3")
    service = deployment.service
    await service.start_healthy()
    termed_at: list[float] = []

    def term_partway(outcomes: list[Outcome]) -> None:
        if not termed_at and sum(o.status == 201 for o in outcomes) >= 80:
            service.send(signal.SIGTERM)
            termed_at.append(time.monotonic())

    names = [f"TERM_{i}" for i in range(1000)]
    outcomes = await drive_creates(deployment, names, concurrency=32, on_outcome=term_partway)
    bad = sorted({str(o.status) for o in outcomes if o.error is None and o.status != 201})
    assert not bad, f"requests answered with {bad}"
    assert termed_at, "the load finished before SIGTERM"
    # Bounded: uvicorn's graceful drain, then the relay's flush, plus start-up slack.
    returncode = await service.wait_exit(GRACEFUL_SECONDS + 3 + 15)
    after_term = [o for o in outcomes if o.at > termed_at[0]]
    assert any(o.status == 201 for o in after_term), "no request in flight at SIGTERM completed"
    answered = {o.secret_id for o in outcomes if o.status == 201}
    unanswered = {o.name for o in outcomes if o.error is not None}
    # A healthy broker: the relay flushed everything before the process exited.
    assert service.pending_events() == 0, "events were left in the outbox with Kafka up"

    await service.start_healthy()
    listed, _ = await assert_every_stored_secret_has_its_event(deployment, kafka_bootstrap)
    stored = {s["id"] for s in listed}
    assert answered <= stored, "a 201 was answered for a secret that is not stored"
    # Drained means no request was processed without its answer reaching the client.
    assert stored == answered, (
        f"{len(stored - answered)} secrets are stored though their request was cut off "
        f"({len(unanswered)} requests went unanswered)"
    )
    await service.stop()
    deployment.assert_logs_clean()
    assert returncode == 0, f"SIGTERM'd service exited with {returncode}, not 0"


@pytest.fixture
async def hung_broker() -> AsyncIterator[str]:
    """An address that accepts TCP connections and never answers: a wedged broker."""
    writers: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        with contextlib.suppress(Exception):
            while await reader.read(65536):
                pass

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.close()
        for writer in writers:
            writer.close()
        await asyncio.wait_for(server.wait_closed(), 10)


async def test_sigterm_with_a_hung_broker_is_bounded_and_keeps_the_events(
    deploy: DeploymentFactory, hung_broker: str, kafka_bootstrap: str
) -> None:
    n = 20
    deployment: Deployment = await deploy(hung_broker, KAFKA_TIMEOUT_SECONDS="3", RELAY_SHUTDOWN_SECONDS="2")
    service = deployment.service
    await service.start_healthy()
    started = time.monotonic()
    outcomes = await drive_creates(deployment, [f"HUNG_{i}" for i in range(n)], concurrency=4)
    assert [o.status for o in outcomes] == [201] * n
    assert time.monotonic() - started < 10, "creates wait on the hung broker"
    # Let the relay get stuck inside a Kafka call before the signal.
    await asyncio.sleep(1)

    termed = time.monotonic()
    service.send(signal.SIGTERM)
    returncode = await service.wait_exit(30)
    took = time.monotonic() - termed
    assert returncode in (0, -signal.SIGTERM), f"exited with {returncode}"
    # 2s for the relay's flush, 5s to close the producer: well under 20s.
    assert took < 20, f"shutdown took {took:.1f}s with a hung broker"
    assert service.pending_events() == n, "events must stay in the outbox when Kafka cannot take them"

    service.env["KAFKA_BOOTSTRAP_SERVERS"] = kafka_bootstrap
    await service.start_healthy()
    listed, _ = await assert_every_stored_secret_has_its_event(deployment, kafka_bootstrap)
    assert {s["id"] for s in listed} == {o.secret_id for o in outcomes}
    await service.stop()
    deployment.assert_logs_clean()


async def test_consumer_drops_duplicates_after_a_forced_resend(
    deploy: DeploymentFactory, kafka_bootstrap: str, tmp_path: Path
) -> None:
    n = 20
    deployment: Deployment = await deploy(kafka_bootstrap)
    service = deployment.service
    await service.start_healthy()
    outcomes = await drive_creates(deployment, [f"RESEND_{i}" for i in range(n)], concurrency=4)
    assert [o.status for o in outcomes] == [201] * n
    created = {o.secret_id for o in outcomes}
    await wait_for_records(kafka_bootstrap, deployment.topic, lambda rs: len(rs) >= n, timeout=60)
    await service.stop()

    # Force the relay to publish everything again, as after a crash between publish and mark.
    with contextlib.closing(sqlite3.connect(service.db_path, timeout=30)) as db, db:
        db.execute("UPDATE relay_progress SET published_seq = 0")
        reset = db.execute(CursorProgress().count_pending().sql).fetchone()[0]
    assert reset == n
    await service.start_healthy()
    records = await wait_for_records(
        kafka_bootstrap, deployment.topic, lambda rs: len(rs) >= 2 * n, timeout=60, what="the resent events"
    )
    await poll_until(lambda: service.pending_events() == 0, 60, what="the outbox to drain")
    await service.stop()
    event_ids = {record_headers(r)["ce_id"] for r in records}
    assert len(event_ids) == n, "a resend must repeat the same event ids"

    audit_log = tmp_path / "audit.jsonl"
    env = {**os.environ, **deployment.service.env, "PYTHONUNBUFFERED": "1"}
    command = [executable(), "audit-consume", "--output", str(audit_log), "--idle-exit-seconds", "5"]
    for run, group in enumerate([f"g-{uuid.uuid4()}", f"g-{uuid.uuid4()}"]):
        # The second run is a new consumer group over the same log: it re-reads all 2N records.
        with (tmp_path / f"audit-{run}.log").open("ab") as log:
            done = await asyncio.to_thread(
                subprocess.run,
                [*command, "--group", group],
                env=env,
                cwd=tmp_path,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=120,
            )
        assert done.returncode == 0, f"audit-consume run {run} exited with {done.returncode}"
        lines = [json.loads(line) for line in audit_log.read_text().splitlines()]
        assert len(lines) == n, f"run {run}: {len(lines)} audit lines for {n} events"
        assert {line["id"] for line in lines} == event_ids
        assert {line["data"]["secretId"] for line in lines} == created
        assert all(line["type"] == "secret.created" for line in lines)
    assert not leaked(CANARY, audit_log.read_bytes()), "the audit log contains the canary value"
    deployment.assert_logs_clean()


async def test_service_logs_never_contain_secrets(deploy: DeploymentFactory, kafka_bootstrap: str) -> None:
    # DEBUG: the most the service (and its libraries) will ever write.
    deployment: Deployment = await deploy(kafka_bootstrap, LOG_LEVEL="DEBUG")
    service = deployment.service
    await service.start_healthy()
    headers = deployment.headers
    async with httpx.AsyncClient(base_url=service.url, timeout=30) as http:
        created = await http.post("/api/secrets", json={"name": "LOGGED", "value": CANARY}, headers=headers)
        assert created.status_code == 201
        secret_id = created.json()["id"]
        duplicate = await http.post("/api/secrets", json={"name": "LOGGED", "value": CANARY}, headers=headers)
        assert duplicate.status_code == 409
        updated = await http.put(f"/api/secrets/{secret_id}", json={"value": CANARY + "2"}, headers=headers)
        assert updated.status_code == 200
        keyed = await http.post(
            "/api/secrets",
            json={"name": "IDEMPOTENT", "value": CANARY},
            headers={**headers, "Idempotency-Key": "k-1"},
        )
        assert keyed.status_code == 201
        # Requests the service refuses, each carrying a secret somewhere.
        refused = [
            await http.post("/api/secrets", json={"name": "BAD", "value": [CANARY]}, headers=headers),
            await http.post(
                "/api/secrets", json={"name": CANARY + " bad name!", "value": "v"}, headers=headers
            ),
            await http.post(
                "/api/secrets", content=b'{"name": "TRUNC", "value": "' + CANARY.encode(), headers=headers
            ),
            await http.post(
                "/api/secrets",
                json={"name": "IDEMPOTENT", "value": CANARY + "x"},
                headers={**headers, "Idempotency-Key": "k-1"},
            ),
            await http.post(
                "/api/secrets",
                json={"name": "NOAUTH", "value": CANARY},
                headers={"X-Auth-Token": deployment.project["apiKey"][:-4] + "AAAA"},
            ),
        ]
        assert all(400 <= r.status_code < 500 for r in refused), [r.status_code for r in refused]
        assert not any(leaked(CANARY, r.content) for r in refused), "an error response echoes the value"
        read = await http.get("/api/secrets/by-name/IDEMPOTENT/value", headers=headers)
        assert read.status_code == 200
        deleted = await http.delete(f"/api/secrets/{secret_id}", headers=headers)
        assert deleted.status_code == 200
    await wait_for_records(kafka_bootstrap, deployment.topic, lambda rs: len(rs) >= 4, timeout=60)
    await service.stop()
    # Statement parameters: the API key's stored hash, sealed values and fingerprints (a driver
    # logging its statements at DEBUG would print them).
    with contextlib.closing(sqlite3.connect(service.db_path)) as db:
        stored = [row[0] for row in db.execute("SELECT key_hash FROM api_keys")]
        blobs = [bytes(row[0]) for row in db.execute("SELECT sealed_value FROM secrets")]
        stored += [row[0] for row in db.execute("SELECT fingerprint FROM idempotency_keys")]
    # And `keys rewrap` at DEBUG, which reads and writes every sealed value.
    rotated = f"{generate_master_key_entry('rotated')},{deployment.master_keys}"
    rewrap = await asyncio.to_thread(
        subprocess.run,
        [executable(), "keys", "rewrap"],
        env={**os.environ, **service.env, "SECRETS_MASTER_KEYS": rotated, "LOG_LEVEL": "DEBUG"},
        cwd=service.workdir,
        capture_output=True,
        timeout=60,
    )
    assert rewrap.returncode == 0, rewrap.stderr[-2000:]
    with contextlib.closing(sqlite3.connect(service.db_path)) as db:
        blobs += [bytes(row[0]) for row in db.execute("SELECT sealed_value FROM secrets")]
    # A sealed value as a log line would show it: hex, base64 (leaked() tries both), or a bytes repr.
    stored += [blob.hex() for blob in blobs] + [repr(blob[-16:])[2:-1] for blob in blobs]
    deployment.assert_logs_clean()
    logs = service.log_text() + rewrap.stdout + rewrap.stderr
    assert not leaked(CANARY + "2", logs), "the service log contains an updated value"
    assert stored and not any(leaked(parameter, logs) for parameter in stored), (
        "a statement parameter is logged"
    )
