"""`serve --relay=separate`: the relay in a child process keeps the outbox contract, is started
again when it dies, and never outlives the API process."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from tests.support.service import (
    Deployment,
    DeploymentFactory,
    assert_every_stored_secret_has_its_event,
    drive_creates,
)
from tests.support.waiting import poll_until

pytestmark = [pytest.mark.slow, pytest.mark.kafka]


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(child) for child in text]
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


async def start_with_its_relay(deployment: Deployment) -> int:
    """Start the service (RELAY_MODE=separate) healthy; the pid of its relay process."""
    await deployment.service.start_healthy()
    process = deployment.service.process
    assert process is not None
    relays: list[int] = await poll_until(lambda: children(process.pid), 30, what="the relay process")
    (relay,) = relays
    return relay


async def test_a_separate_relay_publishes_every_event_survives_its_own_death_and_dies_with_the_api(
    deploy: DeploymentFactory, kafka_bootstrap: str
) -> None:
    deployment: Deployment = await deploy(kafka_bootstrap, RELAY_MODE="separate")
    relay = await start_with_its_relay(deployment)
    service = deployment.service
    assert service.process is not None

    first = await drive_creates(deployment, [f"SEP_{i}" for i in range(100)], concurrency=8)
    assert {o.status for o in first} == {201}
    await assert_every_stored_secret_has_its_event(deployment, kafka_bootstrap)

    # The relay dies: the API process starts another, and nothing is lost.
    os.kill(relay, signal.SIGKILL)
    second = await drive_creates(deployment, [f"AFTER_{i}" for i in range(100)], concurrency=8)
    assert {o.status for o in second} == {201}
    (relay_again,) = await poll_until(
        lambda: [c for c in children(service.process.pid) if c != relay], 30, what="a new relay process"
    )
    await assert_every_stored_secret_has_its_event(deployment, kafka_bootstrap)

    # The API process is killed outright: its relay sees the pipe close, flushes and exits.
    service.process.send_signal(signal.SIGKILL)
    deadline = time.monotonic() + 30
    while alive(relay_again) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert not alive(relay_again), "the relay process outlived the API process"
    log = service.log_text()
    assert b"relay process" in log and b"starting it again" in log
    deployment.assert_logs_clean()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to tell them apart")
async def test_serve_and_its_relay_run_on_the_cpus_they_are_given(
    deploy: DeploymentFactory, kafka_bootstrap: str
) -> None:
    api_cpu, relay_cpu = sorted(os.sched_getaffinity(0))[:2]
    deployment: Deployment = await deploy(
        kafka_bootstrap, RELAY_MODE="separate", SERVE_CPUS=str(api_cpu), RELAY_CPUS=str(relay_cpu)
    )
    relay = await start_with_its_relay(deployment)
    service = deployment.service
    assert service.process is not None
    created = await drive_creates(deployment, [f"PINNED_{i}" for i in range(50)], concurrency=8)
    assert {o.status for o in created} == {201}
    await assert_every_stored_secret_has_its_event(deployment, kafka_bootstrap)

    # Every thread of the API process (event loop, database threads) on its CPU, the relay's on its own.
    threads = [int(task.name) for task in Path(f"/proc/{service.process.pid}/task").iterdir()]
    assert len(threads) > 1
    assert {tid: os.sched_getaffinity(tid) for tid in threads} == {tid: {api_cpu} for tid in threads}
    relay_threads = [int(task.name) for task in Path(f"/proc/{relay}/task").iterdir()]
    assert {tid: os.sched_getaffinity(tid) for tid in relay_threads} == {
        tid: {relay_cpu} for tid in relay_threads
    }
    deployment.assert_logs_clean()


async def test_sigterm_stops_the_relay_process_with_the_api(
    deploy: DeploymentFactory, kafka_bootstrap: str
) -> None:
    deployment: Deployment = await deploy(kafka_bootstrap, RELAY_MODE="separate", SHUTDOWN_DRAIN_SECONDS="0")
    relay = await start_with_its_relay(deployment)
    service = deployment.service
    assert service.process is not None
    outcomes = await drive_creates(deployment, [f"TERM_{i}" for i in range(50)], concurrency=4)
    assert {o.status for o in outcomes} == {201}

    assert await service.stop() == 0
    assert not alive(relay)
    await assert_every_stored_secret_has_its_event_after_restart(deployment, kafka_bootstrap)


async def assert_every_stored_secret_has_its_event_after_restart(
    deployment: Deployment, bootstrap: str
) -> None:
    await deployment.service.start_healthy()
    try:
        await assert_every_stored_secret_has_its_event(deployment, bootstrap)
    finally:
        await deployment.service.stop()
