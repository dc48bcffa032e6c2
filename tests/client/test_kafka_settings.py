"""The client reads Kafka from the service's variables, and refuses what cannot work, naming the variable."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from secrets_client.kafka import KafkaSettings, KafkaSettingsError

from tests.support.leaks import CANARY


def test_defaults_and_plain_settings() -> None:
    settings = KafkaSettings.from_env({})
    assert (settings.bootstrap_servers, settings.topic, settings.security_protocol) == (
        "127.0.0.1:9092",
        "secret-events",
        "PLAINTEXT",
    )
    settings = KafkaSettings.from_env(
        {"KAFKA_BOOTSTRAP_SERVERS": "a:9092, b:9093", "KAFKA_TOPIC": "events", "KAFKA_TIMEOUT_SECONDS": "45"}
    )
    options = settings.client_options()
    assert options["bootstrap_servers"] == "a:9092,b:9093"
    assert options["request_timeout_ms"] == 45000
    assert settings.topic == "events"


def test_sasl_settings_become_aiokafka_options() -> None:
    env = {
        "KAFKA_SECURITY_PROTOCOL": "sasl_plaintext",
        "KAFKA_SASL_MECHANISM": "scram-sha-512",
        "KAFKA_SASL_USERNAME": "agent",
        "KAFKA_SASL_PASSWORD": CANARY,
    }
    options = KafkaSettings.from_env(env).client_options()
    assert options["security_protocol"] == "SASL_PLAINTEXT"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == ("agent", CANARY)


def _self_signed_ca(directory: Path) -> Path:
    """A throwaway CA certificate (PEM), made with cryptography."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = directory / "ca.pem"
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return path


def test_ssl_settings_build_a_context_from_the_ca_file(tmp_path: Path) -> None:
    cafile = _self_signed_ca(tmp_path)
    settings = KafkaSettings.from_env({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": str(cafile)})
    context = settings.client_options()["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "test CA"),),)]
    not_a_ca = tmp_path / "not-a-ca.pem"
    not_a_ca.write_text("nothing here")
    with pytest.raises(KafkaSettingsError) as refused:
        KafkaSettings.from_env(
            {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": str(not_a_ca)}
        ).client_options()
    assert "KAFKA_SSL_CAFILE" in str(refused.value)


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"KAFKA_BOOTSTRAP_SERVERS": "no-port"}, "KAFKA_BOOTSTRAP_SERVERS"),
        ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "KAFKA_SECURITY_PROTOCOL"),
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "KAFKA_SASL_MECHANISM"),
        ({"KAFKA_SASL_USERNAME": "agent"}, "KAFKA_SASL_USERNAME"),
        ({"KAFKA_SASL_PASSWORD": CANARY}, "KAFKA_SASL_PASSWORD"),
        ({"KAFKA_SSL_CAFILE": "/nonexistent/ca.pem", "KAFKA_SECURITY_PROTOCOL": "SSL"}, "KAFKA_SSL_CAFILE"),
        ({"KAFKA_SSL_CAFILE": "-----BEGIN CERTIFICATE-----" + CANARY}, "KAFKA_SSL_CAFILE"),
        ({"KAFKA_TIMEOUT_SECONDS": "soon"}, "KAFKA_TIMEOUT_SECONDS"),
    ],
)
def test_bad_settings_name_the_variable_never_the_value(env: dict[str, str], names: str) -> None:
    with pytest.raises(KafkaSettingsError) as refused:
        KafkaSettings.from_env(env)
    assert names in str(refused.value)
    assert CANARY not in str(refused.value)


def test_the_sasl_password_can_come_from_a_file_as_for_the_service(tmp_path: Path) -> None:
    password_file = tmp_path / "password"
    password_file.write_text(CANARY + "\n")
    env = {
        "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "KAFKA_SASL_MECHANISM": "PLAIN",
        "KAFKA_SASL_USERNAME": "agent",
        "KAFKA_SASL_PASSWORD_FILE": str(password_file),
    }
    assert KafkaSettings.from_env(env).client_options()["sasl_plain_password"] == CANARY
    with pytest.raises(KafkaSettingsError) as both:
        KafkaSettings.from_env({**env, "KAFKA_SASL_PASSWORD": CANARY})
    assert "both set" in str(both.value) and CANARY not in str(both.value)
    with pytest.raises(KafkaSettingsError) as missing:
        KafkaSettings.from_env({**env, "KAFKA_SASL_PASSWORD_FILE": str(tmp_path / "nope")})
    assert "KAFKA_SASL_PASSWORD_FILE" in str(missing.value)
