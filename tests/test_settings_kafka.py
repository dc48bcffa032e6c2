"""Kafka's security settings: checked at startup, each error naming the variable to fix, the password never shown."""

from __future__ import annotations

import base64
import os
import ssl
from pathlib import Path

import pytest

from service.crypto import generate_master_key_entry
from service.settings import ConfigurationError, Settings
from tests.support.certificates import Issued, issue, make_ca
from tests.support.cli import run_cli
from tests.support.leaks import leaked
from tests.support.paths import ROOT

PASSWORD = "kafka-pw-3c91f0-DO-NOT-LEAK"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Issued]:
    directory = tmp_path_factory.mktemp("pki")
    ca = make_ca(directory)
    return {"ca": ca, "client": issue(ca, directory, "client"), "other": issue(ca, directory, "other")}


def settings(**kafka: str) -> Settings:
    return Settings.from_env(
        {
            "SECRETS_MASTER_KEYS": generate_master_key_entry("k1"),
            "API_KEY_HASH_KEY": base64.b64encode(os.urandom(32)).decode(),
            **kafka,
        }
    )


def sasl_ssl(pki: dict[str, Issued], **more: str) -> dict[str, str]:
    return {
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": "secrets-service",
        "KAFKA_SASL_PASSWORD": PASSWORD,
        "KAFKA_SSL_CAFILE": str(pki["ca"].cert),
        **more,
    }


def test_plaintext_by_default_with_no_tls_or_sasl_options() -> None:
    options = settings().kafka.client_options()
    assert options["security_protocol"] == "PLAINTEXT"
    assert not {"ssl_context", "sasl_mechanism", "sasl_plain_username", "sasl_plain_password"} & set(options)


def test_sasl_ssl_gives_every_client_verified_tls_and_its_credentials(pki: dict[str, Issued]) -> None:
    connection = settings(**sasl_ssl(pki, KAFKA_SECURITY_PROTOCOL="sasl_ssl")).kafka
    for options in (connection.client_options(), connection.consumer_options()):
        assert options["security_protocol"] == "SASL_SSL"
        assert options["sasl_mechanism"] == "SCRAM-SHA-512"
        assert options["sasl_plain_username"] == "secrets-service"
        assert options["sasl_plain_password"] == PASSWORD
        context: ssl.SSLContext = options["ssl_context"]
        assert context.verify_mode == ssl.CERT_REQUIRED
        assert context.check_hostname is True
        # The configured CA is the one trusted (and not only the system's).
        assert any("test ca" in str(cert.get("subject")) for cert in context.get_ca_certs())


def test_mutual_tls_loads_the_client_certificate(pki: dict[str, Issued]) -> None:
    connection = settings(
        KAFKA_SECURITY_PROTOCOL="SSL",
        KAFKA_SSL_CAFILE=str(pki["ca"].cert),
        KAFKA_SSL_CERTFILE=str(pki["client"].cert),
        KAFKA_SSL_KEYFILE=str(pki["client"].key),
    ).kafka
    options = connection.client_options()
    assert options["security_protocol"] == "SSL"
    assert "sasl_plain_password" not in options
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    assert connection.ssl_certfile == str(pki["client"].cert)


def without(env: dict[str, str], name: str) -> dict[str, str]:
    return {key: value for key, value in env.items() if key != name}


def _bad_cases(pki: dict[str, Issued], tmp: Path) -> list[tuple[dict[str, str], str]]:
    not_pem = tmp / "not-a-ca.pem"
    not_pem.write_text("hello\n")
    return [
        ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "KAFKA_SECURITY_PROTOCOL must be one of"),
        (sasl_ssl(pki, KAFKA_SASL_MECHANISM="GSSAPI"), "KAFKA_SASL_MECHANISM must be one of"),
        (without(sasl_ssl(pki), "KAFKA_SASL_MECHANISM"), "KAFKA_SASL_MECHANISM is required when"),
        (without(sasl_ssl(pki), "KAFKA_SASL_USERNAME"), "KAFKA_SASL_USERNAME is required when"),
        (without(sasl_ssl(pki), "KAFKA_SASL_PASSWORD"), "KAFKA_SASL_PASSWORD is required when"),
        (
            {"KAFKA_SASL_PASSWORD": PASSWORD},
            "KAFKA_SASL_PASSWORD is set but KAFKA_SECURITY_PROTOCOL is PLAINTEXT",
        ),
        (
            {**sasl_ssl(pki), "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT"},
            "KAFKA_SSL_CAFILE is set but KAFKA_SECURITY_PROTOCOL is SASL_PLAINTEXT",
        ),
        (
            sasl_ssl(pki, KAFKA_SSL_CAFILE=str(tmp / "missing.pem")),
            "KAFKA_SSL_CAFILE names a file that does not exist",
        ),
        (sasl_ssl(pki, KAFKA_SSL_CAFILE=str(tmp)), "KAFKA_SSL_CAFILE names a directory"),
        (sasl_ssl(pki, KAFKA_SSL_CAFILE=str(not_pem)), "KAFKA_SSL_CAFILE holds no PEM CA certificate"),
        (
            sasl_ssl(pki, KAFKA_SSL_CAFILE=pki["ca"].cert.read_text()),
            "KAFKA_SSL_CAFILE must be the path of a PEM file, not its contents",
        ),
        (
            sasl_ssl(
                pki,
                KAFKA_SSL_CERTFILE=str(pki["client"].cert),
                KAFKA_SSL_KEYFILE=pki["client"].key.read_text(),
            ),
            "KAFKA_SSL_KEYFILE must be the path of a PEM file, not its contents",
        ),
        (
            sasl_ssl(pki, KAFKA_SSL_CERTFILE=str(pki["client"].cert)),
            "KAFKA_SSL_KEYFILE is required for mutual TLS",
        ),
        (
            sasl_ssl(pki, KAFKA_SSL_KEYFILE=str(pki["client"].key)),
            "KAFKA_SSL_CERTFILE is required for mutual TLS",
        ),
        (
            sasl_ssl(
                pki, KAFKA_SSL_CERTFILE=str(pki["client"].cert), KAFKA_SSL_KEYFILE=str(pki["other"].key)
            ),
            "KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE are not a PEM certificate and its unencrypted key",
        ),
    ]


def test_each_misconfiguration_names_the_variable_and_never_a_secret(
    pki: dict[str, Issued], tmp_path: Path
) -> None:
    for env, expected in _bad_cases(pki, tmp_path):
        with pytest.raises(ConfigurationError) as info:
            settings(**env)
        message = str(info.value)
        assert expected in message, (expected, message)
        assert not leaked(PASSWORD, message)
        assert "PRIVATE KEY" not in message and "BEGIN" not in message


def test_the_password_is_in_no_repr(pki: dict[str, Issued]) -> None:
    configured = settings(**sasl_ssl(pki))
    for text in (repr(configured), str(configured), repr(configured.kafka), configured.kafka.for_logs):
        assert not leaked(PASSWORD, text)
    assert configured.kafka.for_logs.endswith("(SASL_SSL, SCRAM-SHA-512 as secrets-service)")


def test_the_password_can_come_from_a_file(pki: dict[str, Issued], tmp_path: Path) -> None:
    """KAFKA_SASL_PASSWORD_FILE, as Docker and Kubernetes mount secrets."""
    mounted = tmp_path / "kafka-password"
    mounted.write_text(PASSWORD + "\n")
    env = without(sasl_ssl(pki), "KAFKA_SASL_PASSWORD")
    assert settings(**env, KAFKA_SASL_PASSWORD_FILE=str(mounted)).kafka.sasl_password == PASSWORD


def test_serve_refuses_to_start_without_the_password(pki: dict[str, Issued]) -> None:
    env = without(sasl_ssl(pki), "KAFKA_SASL_PASSWORD")
    env["SECRETS_MASTER_KEYS"] = generate_master_key_entry("k1")
    env["API_KEY_HASH_KEY"] = base64.b64encode(os.urandom(32)).decode()
    result = run_cli("serve", "--port", "1", env=env, timeout=60)
    assert result.returncode == 2
    assert "KAFKA_SASL_PASSWORD is required when KAFKA_SECURITY_PROTOCOL is SASL_SSL" in result.stderr
    assert "Traceback" not in result.stderr


def test_every_kafka_setting_is_documented_where_operators_look() -> None:
    import dataclasses

    names = [
        f.metadata["env"] for f in dataclasses.fields(Settings) if f.metadata["env"].startswith("KAFKA_")
    ]
    assert "KAFKA_SASL_PASSWORD" in names
    example = (ROOT / "config" / "example.env").read_text()
    readme = (ROOT / "README.md").read_text()
    assert [n for n in names if f"{n}=" not in example] == [], "missing from config/example.env"
    assert [n for n in names if f"`{n}" not in readme] == [], "missing from the README"
