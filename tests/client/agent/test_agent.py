"""secrets-sync end to end: a real `secrets-service serve` (both backends), the real broker, and the agent
as a subprocess of its console script. Every process a test starts is stopped at teardown."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from secrets_client import RetryPolicy, SecretsClient

from service.settings import Settings
from tests.support.app import issue_key, make_env, make_project
from tests.support.kafka import LocalBroker, record_headers, topic_snapshot
from tests.support.leaks import CANARY, leaked
from tests.support.process import ServiceProcess, console_script
from tests.support.waiting import poll_until

pytestmark = [pytest.mark.slow, pytest.mark.kafka]

TRICKY = "line one\nline two\n\ttab, 'quotes', \"double\", $HOME, ünïcödé 🔑 and no final newline"


class Agent:
    """One `secrets-sync` process at a time on one directory; restartable; output kept in a file."""

    def __init__(self, workdir: Path, url: str, api_key: str, kafka: dict[str, str], *extra: str) -> None:
        self.workdir = workdir
        self.directory = workdir / "secrets"
        self.env_file = workdir / "app.env"
        self.changes = workdir / "changes.log"
        self.log = workdir / "agent.log"
        self.url = url
        self.api_key = api_key
        self.kafka = kafka
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None
        self.key_in_file = False

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None, "already running"
        on_change = (
            f'printf "%s\\n" "$SECRETS_CHANGED" >> {self.changes}; '
            f'[ -z "$SECRETS_API_KEY$SECRETS_API_KEY_FILE" ] || echo "API KEY LEAKED" >> {self.changes}'
        )
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    console_script("secrets-sync"),
                    "--url",
                    self.url,
                    "--dir",
                    str(self.directory),
                    "--env-file",
                    str(self.env_file),
                    "--on-change",
                    on_change,
                    "--log-level",
                    "DEBUG",
                    *self.extra,
                ],
                env={**os.environ, **self.kafka, **self._key_setting(), "PYTHONUNBUFFERED": "1"},
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def _key_setting(self) -> dict[str, str]:
        """The API key as SECRETS_API_KEY, or (key_in_file) in a 0600 file named by SECRETS_API_KEY_FILE."""
        if not self.key_in_file:
            return {"SECRETS_API_KEY": self.api_key}
        key_file = self.workdir / "api_key"
        key_file.touch(mode=0o600)
        key_file.write_text(self.api_key + "\n")
        return {"SECRETS_API_KEY_FILE": str(key_file)}

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)

    async def stop(self, timeout: float = 30) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.process.poll() is None:
            assert time.monotonic() < deadline, "the agent did not stop on SIGTERM"
            await asyncio.sleep(0.05)
        return self.process.returncode

    def files(self) -> dict[str, bytes]:
        if not self.directory.exists():
            return {}
        return {p.name: p.read_bytes() for p in self.directory.iterdir() if not p.name.startswith(".")}

    def ready(self) -> bool:
        return (self.directory / ".ready").exists()

    async def holds(self, expected: dict[str, str], timeout: float = 60, what: str = "the files") -> None:
        """Wait until the directory holds exactly `expected` (names and bytes)."""
        want = {name: value.encode() for name, value in expected.items()}

        def check() -> bool:
            assert self.process is not None and self.process.poll() is None, (
                f"the agent exited: {self.tail()}"
            )
            return self.ready() and self.files() == want

        try:
            await poll_until(check, timeout, interval=0.05, what=what)
        except AssertionError:
            have = self.files()
            missing = sorted(set(want) - set(have))[:5]
            extra = sorted(set(have) - set(want))[:5]
            wrong = sorted(n for n in set(want) & set(have) if want[n] != have[n])[:5]
            raise AssertionError(
                f"{what}: missing {missing}, extra {extra}, wrong {wrong}; {self.tail()}"
            ) from None

    def tail(self) -> str:
        return self.log.read_bytes()[-1500:].decode(errors="replace") if self.log.exists() else ""

    def assert_logs_clean(self, *values: str) -> None:
        text = self.log.read_bytes()
        assert text, "the agent wrote no log at all"
        for value in values:
            assert not leaked(value, text), "the agent's log holds a value"
        assert not leaked(self.api_key, text), "the agent's log holds its API key"


@dataclass
class Stack:
    service: ServiceProcess
    settings: Settings
    project: dict[str, str]
    reader: dict[str, Any]  # the agent's secrets:read key
    bootstrap: str
    workdir: Path

    def client(self) -> SecretsClient:
        return SecretsClient(
            self.service.url, self.project["apiKey"], retry=RetryPolicy(attempts=6, base_delay=0.05)
        )

    def agent(self, *extra: str) -> Agent:
        kafka = {"KAFKA_BOOTSTRAP_SERVERS": self.bootstrap, "KAFKA_TOPIC": self.settings.kafka_topic}
        return Agent(self.workdir, self.service.url, self.reader["apiKey"], kafka, *extra)

    async def state(self) -> dict[str, str]:
        """Every secret's current value, as the service has it."""
        async with self.client() as api:
            secrets = await api.list()
            values = await asyncio.gather(*(api.read_value(id=s.id) for s in secrets))
        return {v.name: v.reveal() for v in values}

    async def reads_by(self, api_key_id: str) -> dict[tuple[str, int], int]:
        """Distinct secret.accessed events (by ce_id: a republished record is the same read) made with
        this key, per (secret, version)."""
        reads: dict[tuple[str, int], set[str]] = {}
        for record in await topic_snapshot(self.bootstrap, self.settings.kafka_topic):
            headers = record_headers(record)
            if headers.get("ce_type") != "secret.accessed":
                continue
            data = json.loads(record.value)
            if data["actor"]["apiKeyId"] == api_key_id:
                reads.setdefault((data["secretId"], data["version"]), set()).add(headers["ce_id"])
        return {key: len(ids) for key, ids in reads.items()}


StackFactory = Callable[..., Awaitable[Stack]]


@pytest.fixture
async def stack(database_url: str, tmp_path: Path) -> AsyncIterator[StackFactory]:
    """Start the service against a broker, with a project and a secrets:read key for the agent."""
    started: list[ServiceProcess] = []
    agents: list[Agent] = []

    async def make(bootstrap: str) -> Stack:
        env = make_env(
            database_url,
            KAFKA_BOOTSTRAP_SERVERS=bootstrap,
            OUTBOX_POLL_SECONDS="0.05",
            KAFKA_TIMEOUT_SECONDS="5",
        )
        settings = Settings.from_env(env)
        project = await make_project(settings, "agent")
        reader = await issue_key(settings, project["projectId"], "secrets:read")
        service = ServiceProcess(env, tmp_path / "service.log")
        started.append(service)
        await service.start()
        made = Stack(service, settings, project, reader, bootstrap, tmp_path)
        original = made.agent

        def tracked(*extra: str) -> Agent:
            agent = original(*extra)
            agents.append(agent)
            return agent

        made.agent = tracked  # type: ignore[method-assign]
        return made

    try:
        yield make
    finally:
        for agent in agents:
            agent.kill()
        for service in started:
            try:
                await service.stop()
            finally:
                service.kill()


async def repeat_every_event(bootstrap: str, topic: str) -> int:
    """Publish every record of the topic once more, byte for byte (what an at-least-once relay may do)."""
    records = await topic_snapshot(bootstrap, topic)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    async with asyncio.timeout(60):
        await producer.start()
        try:
            for record in records:
                await producer.send_and_wait(
                    topic,
                    record.value,
                    key=record.key,
                    partition=record.partition,
                    headers=list(record.headers),
                )
        finally:
            await producer.stop()
    return len(records)


async def test_create_update_delete_reach_the_files_and_each_version_is_read_once(
    stack: StackFactory, kafka_bootstrap: str
) -> None:
    s = await stack(kafka_bootstrap)
    async with s.client() as api:
        before = await api.create("BEFORE_START", "was there first")
        agent = s.agent()
        agent.start()
        await agent.holds({"BEFORE_START": "was there first"}, what="the first full sync")
        assert stat.S_IMODE(agent.directory.stat().st_mode) == 0o700
        assert stat.S_IMODE((agent.directory / "BEFORE_START").stat().st_mode) == 0o600
        assert stat.S_IMODE((agent.directory / ".ready").stat().st_mode) == 0o600

        created = await api.create("TRICKY", TRICKY)
        await agent.holds({"BEFORE_START": "was there first", "TRICKY": TRICKY}, what="a create")
        assert (agent.directory / "TRICKY").read_bytes() == TRICKY.encode(), "not the exact bytes"

        await api.update(created.id, CANARY)
        await agent.holds({"BEFORE_START": "was there first", "TRICKY": CANARY}, what="an update")
        restored = await api.restore(created.id, 1)
        await agent.holds({"BEFORE_START": "was there first", "TRICKY": TRICKY}, what="a restore")

        await api.delete(before.id)
        await agent.holds({"TRICKY": TRICKY}, what="a delete")
        assert stat.S_IMODE(agent.env_file.stat().st_mode) == 0o600
        assert agent.env_file.read_text().startswith("TRICKY='line one")

        # Every event again, byte for byte, and the old versions' events among them: no new reads.
        repeated = await repeat_every_event(s.bootstrap, s.settings.kafka_topic)
        assert repeated >= 5
        await api.update(
            created.id, "after the repeats"
        )  # a marker: the agent is past the repeats once it has it
        await agent.holds({"TRICKY": "after the repeats"}, what="the update after the repeats")

    reads = await s.reads_by(s.reader["apiKeyId"])
    assert reads, "no secret.accessed event by the agent's key: is the count looking at the right key?"
    assert {key for key, n in reads.items() if n > 1} == set(), f"versions read more than once: {reads}"
    assert (created.id, restored.version) in reads
    assert await agent.stop() == 0
    assert "API KEY LEAKED" not in agent.changes.read_text()
    assert len(agent.changes.read_text().splitlines()) >= 6, "--on-change did not run after each change"
    agent.assert_logs_clean(CANARY, TRICKY)


async def test_two_hundred_creates_under_load_make_two_hundred_exact_files(
    stack: StackFactory, kafka_bootstrap: str
) -> None:
    s = await stack(kafka_bootstrap)
    agent = s.agent()
    agent.key_in_file = True  # as the compose sidecar has it
    agent.start()
    await agent.holds({}, what="the first (empty) sync")
    expected = {f"LOAD_{i:03}": f"value {i}\n{CANARY if i == 7 else ''}{'x' * (i % 50)}" for i in range(200)}
    async with s.client() as api:
        names = iter(expected)

        async def worker() -> None:
            for name in names:
                await api.create(name, expected[name])

        await asyncio.gather(*(worker() for _ in range(16)))
    await agent.holds(expected, timeout=120, what="200 files")
    reads = await s.reads_by(s.reader["apiKeyId"])
    assert len(reads) == 200 and set(reads.values()) == {1}, "not one read per created secret"
    await agent.stop()
    agent.assert_logs_clean(CANARY)


async def test_sigkill_mid_stream_then_a_restart_converges(stack: StackFactory, kafka_bootstrap: str) -> None:
    s = await stack(kafka_bootstrap)
    agent = s.agent()
    agent.start()
    await agent.holds({}, what="the first sync")
    async with s.client() as api:
        created = {}
        for i in range(150):
            created[f"KILL_{i:03}"] = await api.create(f"KILL_{i:03}", f"v1-{i}")
            if i == 60:
                await poll_until(lambda: len(agent.files()) >= 20, 60, interval=0.05, what="files mid-stream")
                agent.kill()
        # While it is down: updates, deletes, more creates.
        for i in range(0, 150, 3):
            await api.update(created[f"KILL_{i:03}"].id, f"v2-{i}")
        for i in range(1, 150, 5):
            await api.delete(created[f"KILL_{i:03}"].id)
        agent.start()
        await agent.holds(await s.state(), timeout=120, what="convergence after SIGKILL and restart")
        # And it follows events again after the restart.
        await api.create("AFTER_RESTART", "new")
        await agent.holds(await s.state(), what="an event after the restart")
    await agent.stop()


async def test_a_broker_outage_converges_through_the_events(stack: StackFactory, tmp_path: Path) -> None:
    broker = LocalBroker(tmp_path / "kafka")
    try:
        bootstrap = await broker.astart()
        s = await stack(bootstrap)
        # No resync for the length of the test: convergence must come from the events.
        agent = s.agent("--resync-seconds", "3600")
        async with s.client() as api:
            first = await api.create("BEFORE_OUTAGE", "one")
            agent.start()
            await agent.holds({"BEFORE_OUTAGE": "one"}, what="the first sync")
            await api.create("WITH_BROKER", "two")
            await agent.holds(await s.state(), what="an event before the outage")

            await broker.astop()
            await api.update(first.id, "changed while the broker was down")
            await api.create("DURING_OUTAGE", CANARY)
            await asyncio.sleep(3)
            assert agent.files()["BEFORE_OUTAGE"] == b"one", (
                "changed without events: is the broker really down?"
            )

            await broker.astart()
            await agent.holds(await s.state(), timeout=180, what="convergence after the broker is back")
            await api.delete(first.id)
            await agent.holds(await s.state(), timeout=60, what="an event after the outage")
        await agent.stop()
        agent.assert_logs_clean(CANARY)
        errors = [line for line in agent.log.read_text().splitlines() if " ERROR aiokafka" in line]
        assert len(errors) < 40, f"{len(errors)} aiokafka error lines for one short outage: not rate-limited"
    finally:
        await broker.astop()


async def test_a_refused_key_stops_the_agent_with_a_clear_message(
    stack: StackFactory, kafka_bootstrap: str
) -> None:
    s = await stack(kafka_bootstrap)
    agent = s.agent()
    agent.api_key = "sk-lw-" + "x" * 48
    agent.start()
    assert agent.process is not None
    code = await asyncio.to_thread(agent.process.wait, 60)
    assert code == 2
    assert "SECRETS_API_KEY" in agent.log.read_text()
    assert not agent.ready()


def test_missing_settings_are_named(tmp_path: Path) -> None:
    done = subprocess.run(
        [console_script("secrets-sync"), "--dir", str(tmp_path / "s")],
        env={k: v for k, v in os.environ.items() if k not in ("SECRETS_API_KEY", "SECRETS_URL")}
        | {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_PASSWORD": CANARY},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    for name in ("--url", "SECRETS_API_KEY", "KAFKA_SASL_MECHANISM"):
        assert name in done.stderr
    assert CANARY not in done.stderr
