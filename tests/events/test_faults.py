"""What aiokafka's faults mean for an operator, and how much of aiokafka's log reaches the service's.

Plain inputs: the exceptions aiokafka and ssl raise (with the attributes they carry),
and log records as aiokafka writes them. The real brokers behind these causes are in
test_kafka_security.py and tests/test_serve.py.
"""

from __future__ import annotations

import logging
import ssl

import pytest
from aiokafka import errors

from service.events.faults import KafkaLogWatch, cause
from service.events.kafka import KafkaConnection
from tests.support.leaks import leaked

PASSWORD = "kafka-pw-77e1b2-DO-NOT-LEAK"
CONNECTION = KafkaConnection(
    "127.0.0.1:9093",
    security_protocol="SASL_SSL",
    sasl_mechanism="SCRAM-SHA-512",
    sasl_username="secrets-service",
    sasl_password=PASSWORD,
    ssl_cafile="/etc/kafka/ca.pem",
)


def handshake_error(reason: str) -> ssl.SSLError:
    exc = ssl.SSLError(1, f"[SSL: {reason}] {reason.lower()}")
    exc.reason = reason
    return exc


def verify_error(code: int, message: str) -> ssl.SSLCertVerificationError:
    exc = ssl.SSLCertVerificationError(
        1, f"[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: {message}"
    )
    exc.verify_code = code
    exc.verify_message = message
    return exc


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (
            errors.SaslAuthenticationFailed(f"invalid credentials {PASSWORD}"),
            "Kafka authentication failed (SASL SCRAM-SHA-512 for user secrets-service;",
        ),
        (
            verify_error(19, "self-signed certificate in certificate chain"),
            "Kafka TLS certificate not trusted",
        ),
        (verify_error(20, "unable to get local issuer certificate"), "Kafka TLS certificate not trusted"),
        (
            verify_error(62, "Hostname mismatch, certificate is not valid for 'localhost'."),
            "Kafka TLS host name mismatch (certificate is not valid for 'localhost';",
        ),
        (
            verify_error(10, "certificate has expired"),
            "Kafka TLS certificate not valid now (certificate has expired)",
        ),
        (
            ConnectionRefusedError(111, "Connection refused"),
            "Kafka broker unreachable at 127.0.0.1:9093 (connection",
        ),
        (errors.UnsupportedSaslMechanismError(), "Kafka broker does not accept SASL SCRAM-SHA-512"),
        (
            errors.KafkaConnectionError("Connection at 127.0.0.1:9093 closed"),
            "Kafka broker at 127.0.0.1:9093 closed the connection",
        ),
        (TimeoutError(), "Kafka did not answer within KAFKA_TIMEOUT_SECONDS (10s)"),
        (ValueError(PASSWORD), "Kafka client error (ValueError)"),
    ],
)
def test_a_cause_names_what_to_fix_and_never_the_exceptions_text(exc: BaseException, expected: str) -> None:
    text = cause(exc, CONNECTION)
    assert text.startswith(expected), text
    assert not leaked(PASSWORD, text)


def aiokafka_record(name: str, level: int, msg: str, *args: object) -> logging.LogRecord:
    return logging.getLogger(name).makeRecord(name, level, "client.py", 1, msg, args, None)


@pytest.fixture
def watch() -> KafkaLogWatch:
    """A watch of the test's own, fed records by hand; what it forwards reaches the root logger."""
    return KafkaLogWatch()


def forwarded(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.name for r in caplog.records]


def test_connection_faults_are_kept_for_the_caller_not_logged(
    watch: KafkaLogWatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    refused = ConnectionRefusedError(111, "Connection refused")
    for _ in range(200):
        watch.handle(
            aiokafka_record("aiokafka", logging.ERROR, "Unable connect to node with id %s: %s", 1, refused)
        )
        watch.handle(
            aiokafka_record(
                "aiokafka.producer.sender",
                logging.WARNING,
                "Got error produce response: %s",
                errors.NodeNotReadyError("Attempt to send a request to node which is not ready (node id 1)."),
            )
        )
    assert forwarded(caplog) == []
    # The caller (the relay, audit-consume) asks what went wrong since its attempt began.
    fault = watch.fault_since(0)
    assert fault is not None and fault.exc is refused, (
        "the most telling fault (refused, not 'not ready') wins"
    )
    assert (
        cause(fault.exc, CONNECTION, fault.where) == "Kafka broker unreachable at node 1 (connection refused)"
    )
    auth = errors.SaslAuthenticationFailed("invalid credentials")
    watch.handle(
        aiokafka_record("aiokafka", logging.ERROR, 'Unable connect to "%s:%s": %s', "127.0.0.1", 9093, auth)
    )
    fault = watch.fault_since(0)
    assert fault is not None and fault.exc is auth and fault.where == "127.0.0.1:9093"
    assert watch.fault_since(fault.at + 1) is None, "a fault from before the attempt is not its cause"


def test_other_messages_pass_once_per_30s_each(
    watch: KafkaLogWatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    for _ in range(100):
        watch.handle(aiokafka_record("aiokafka", logging.ERROR, "Unable to update metadata from %s", [1]))
        watch.handle(
            aiokafka_record("aiokafka.conn", logging.INFO, "Authenticated as %s via %s", "u", "PLAIN")
        )
    assert forwarded(caplog) == ["aiokafka", "aiokafka.conn"]


def test_at_debug_everything_passes(watch: KafkaLogWatch, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    aiokafka_logger = logging.getLogger("aiokafka")
    level = aiokafka_logger.level
    aiokafka_logger.setLevel(logging.DEBUG)
    try:
        for _ in range(50):
            watch.handle(
                aiokafka_record(
                    "aiokafka",
                    logging.ERROR,
                    "Unable connect to node with id %s: %s",
                    1,
                    ConnectionRefusedError(),
                )
            )
    finally:
        aiokafka_logger.setLevel(level)
    assert len(forwarded(caplog)) == 50


def test_a_command_without_a_relay_reports_each_cause_once_per_30s(
    watch: KafkaLogWatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    watch.report_with(CONNECTION)
    auth = errors.SaslAuthenticationFailed("invalid credentials")
    for _ in range(100):
        watch.handle(
            aiokafka_record(
                "aiokafka", logging.ERROR, 'Unable connect to "%s:%s": %s', "127.0.0.1", 9093, auth
            )
        )
    reports = [r.getMessage() for r in caplog.records]
    assert len(reports) == 1
    assert reports[0].startswith("Kafka connection failed: Kafka authentication failed (SASL SCRAM-SHA-512")
    assert not leaked(PASSWORD, reports[0])
