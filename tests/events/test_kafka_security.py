"""The service and audit-consume against a broker that demands SASL_SSL with SCRAM-SHA-512.

One broker for the module (scripts/kafka-local start --secure: a local CA, a broker
certificate for 127.0.0.1, a user whose password is in the broker's client.env); each
test has its own topic and its own `serve` process. Misconfigured clients must name the
cause in the log, keep serving, keep the events in the outbox, and never write the
password anywhere.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.kafka import LocalBroker, record_headers
from tests.support.leaks import leaked
from tests.support.service import (
    Deployment,
    DeploymentFactory,
    assert_every_stored_secret_has_its_event,
    audit_consume,
    drive_creates,
)
from tests.support.waiting import poll_until

pytestmark = [pytest.mark.slow, pytest.mark.kafka]

WRONG_PASSWORD = "wrong-pw-5d0c7e-DO-NOT-LEAK"


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    broker = LocalBroker(tmp_path_factory.mktemp("secure-kafka") / "kafka", mode="secure")
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()


def client_settings(broker: LocalBroker, **changes: str) -> dict[str, str]:
    """The broker's client.env (bootstrap, SASL_SSL, SCRAM-SHA-512, user, password, CA), with `changes`."""
    return {**broker.client_env(), **changes}


async def deploy_secure(deploy: DeploymentFactory, broker: LocalBroker, **changes: str) -> Deployment:
    settings = client_settings(broker, **changes)
    deployment: Deployment = await deploy(settings.pop("KAFKA_BOOTSTRAP_SERVERS"), **settings)
    return deployment


def passwords(broker: LocalBroker) -> list[tuple[str, str]]:
    """Every password a test here hands out, labelled: none may appear in any output."""
    return [
        ("the Kafka password", broker.client_env()["KAFKA_SASL_PASSWORD"]),
        ("the broker admin's password", broker.client_env("admin")["KAFKA_SASL_PASSWORD"]),
        ("the wrong Kafka password", WRONG_PASSWORD),
    ]


async def test_events_go_out_over_sasl_ssl_and_audit_consume_reads_them(
    deploy: DeploymentFactory, secure_broker: LocalBroker, tmp_path: Path
) -> None:
    # DEBUG: the most the service, audit-consume and aiokafka will ever write.
    deployment = await deploy_secure(deploy, secure_broker, LOG_LEVEL="DEBUG")
    await deployment.service.start_healthy()
    outcomes = await drive_creates(deployment, [f"SECURE_{i}" for i in range(20)], concurrency=4)
    assert [o.status for o in outcomes] == [201] * 20
    _, records = await assert_every_stored_secret_has_its_event(deployment, secure_broker.connection())
    assert len({record_headers(r)["ce_id"] for r in records}) == 20
    await poll_until(lambda: deployment.service.pending_events() == 0, 30, what="the outbox to drain")
    await deployment.service.stop()

    audit_log = tmp_path / "audit.jsonl"
    code, output = await audit_consume(
        {**deployment.service.env, "LOG_LEVEL": "DEBUG"}, tmp_path, audit_log, f"g-{uuid.uuid4()}"
    )
    assert code == 0, output.decode()[-2000:]
    lines = [json.loads(line) for line in audit_log.read_text().splitlines()]
    assert {line["data"]["secretId"] for line in lines} == {o.secret_id for o in outcomes}
    assert b"Authenticated as secrets-service via SCRAM-SHA-512" in output, "not read over SCRAM"
    deployment.assert_logs_clean(*passwords(secure_broker), extra_logs=[output, audit_log.read_bytes()])


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        (
            "wrong password",
            "Kafka authentication failed (SASL SCRAM-SHA-512 for user secrets-service; "
            "check KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD)",
        ),
        ("untrusted CA", "Kafka TLS certificate not trusted (check KAFKA_SSL_CAFILE)"),
        ("wrong host name", "Kafka TLS host name mismatch (certificate is not valid for 'localhost'"),
    ],
)
async def test_a_misconfigured_client_names_the_cause_keeps_serving_and_loses_nothing(
    deploy: DeploymentFactory, secure_broker: LocalBroker, tmp_path: Path, fault: str, expected: str
) -> None:
    right = client_settings(secure_broker)
    wrong = {
        "wrong password": {"KAFKA_SASL_PASSWORD": WRONG_PASSWORD},
        "untrusted CA": {"KAFKA_SSL_CAFILE": str(secure_broker.data_dir / "other-ca.pem")},
        # The broker's certificate names 127.0.0.1 only.
        "wrong host name": {"KAFKA_BOOTSTRAP_SERVERS": f"localhost:{secure_broker.port}"},
    }[fault]
    deployment = await deploy_secure(deploy, secure_broker, **wrong)
    service = deployment.service
    await service.start_healthy()

    n = 30
    outcomes = await drive_creates(deployment, [f"MISCONFIGURED_{i}" for i in range(n)], concurrency=4)
    assert [o.status for o in outcomes] == [201] * n, "creates must not depend on Kafka"

    def outage_lines() -> list[str]:
        return [line for line in service.log_text().decode().splitlines() if "Kafka unavailable: " in line]

    await poll_until(outage_lines, 60, what="the log line naming the Kafka fault")
    assert expected in outage_lines()[0], outage_lines()[0]
    assert service.pending_events() == n, "the events must wait in the outbox"
    async with httpx.AsyncClient(base_url=service.url, timeout=10) as http:
        assert (await http.get("/healthz")).status_code == 200
    # audit-consume with the same settings says the same, and exits.
    code, output = await audit_consume(service.env, tmp_path, tmp_path / "audit.jsonl", "g-misconfigured")
    assert code == 1
    assert f"audit-consume cannot read from Kafka: {expected}".encode() in output, output.decode()[-2000:]
    assert output.count(expected.encode()) == 1, "audit-consume said it more than once"
    assert len(outage_lines()) == 1, "the fault was logged more than once within 30 s"
    await service.stop()

    # Fixed (a restart with the right settings): every acknowledged create gets its event.
    service.env.update(right)
    await service.start_healthy()
    listed, _ = await assert_every_stored_secret_has_its_event(deployment, secure_broker.connection())
    assert {s["id"] for s in listed} == {o.secret_id for o in outcomes}
    await poll_until(lambda: service.pending_events() == 0, 30, what="the outbox to drain")
    await service.stop()
    deployment.assert_logs_clean(*passwords(secure_broker), extra_logs=[output])
    assert not leaked(WRONG_PASSWORD, output)
