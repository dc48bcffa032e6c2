"""Configuration fails fast, names the setting, and never prints a key."""

from __future__ import annotations

import base64
import os
import subprocess
import sys

import pytest

from service.crypto import Binding, Keyring, generate_master_key_entry, seal, unseal
from service.settings import ConfigurationError, Settings
from tests.support.paths import ROOT

HASH_KEY = base64.b64encode(os.urandom(32)).decode()


def test_missing_master_keys_is_a_clear_error() -> None:
    with pytest.raises(ConfigurationError, match="SECRETS_MASTER_KEYS is required"):
        Settings.from_env({"API_KEY_HASH_KEY": HASH_KEY})


@pytest.mark.parametrize(
    "value",
    [
        "nocolon",
        "k1:not-base64!",
        "k1:" + base64.b64encode(b"short").decode(),
        "bad id:" + base64.b64encode(os.urandom(32)).decode(),
    ],
)
def test_malformed_master_keys_name_the_setting_not_the_value(value: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env({"SECRETS_MASTER_KEYS": value, "API_KEY_HASH_KEY": HASH_KEY})
    assert "SECRETS_MASTER_KEYS" in str(info.value)
    assert value.partition(":")[2] not in str(info.value) or value.partition(":")[2] == ""


def test_settings_repr_hides_keys() -> None:
    entry = generate_master_key_entry("k1")
    settings = Settings.from_env({"SECRETS_MASTER_KEYS": entry, "API_KEY_HASH_KEY": HASH_KEY})
    assert entry.split(":")[1] not in repr(settings)
    assert HASH_KEY not in repr(settings)


def test_database_url_password_is_obscured_for_logs() -> None:
    settings = Settings.from_env(
        {
            "SECRETS_MASTER_KEYS": generate_master_key_entry("k1"),
            "API_KEY_HASH_KEY": HASH_KEY,
            "DATABASE_URL": "postgresql+asyncpg://svc:hunter2@db:5432/secrets",
        }
    )
    assert "hunter2" not in settings.database.for_logs
    assert settings.database.for_logs == "postgresql+asyncpg://svc:********@db:5432/secrets"


def test_first_master_key_seals_all_open() -> None:
    keyring = Keyring.parse(
        Settings.from_env(
            {
                "SECRETS_MASTER_KEYS": f"{generate_master_key_entry('new')},{generate_master_key_entry('old')}",
                "API_KEY_HASH_KEY": HASH_KEY,
            }
        ).master_keys.reveal()
    )
    assert keyring.primary_id == "new"


def test_keys_generate_output_is_accepted_by_the_service() -> None:
    cli = [sys.executable, "-m", "service.cli"]
    entry = subprocess.run([*cli, "keys", "generate"], capture_output=True, text=True, check=True, cwd=ROOT)
    hash_key = subprocess.run(
        [*cli, "keys", "generate", "--hash-key"], capture_output=True, text=True, check=True, cwd=ROOT
    )
    entry_id = subprocess.run(
        [*cli, "keys", "generate", "--key-id", "rotated-2"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    settings = Settings.from_env(
        {
            "SECRETS_MASTER_KEYS": f"{entry_id.stdout.strip()},{entry.stdout.strip()}",
            "API_KEY_HASH_KEY": hash_key.stdout.strip(),
        }
    )
    keyring = Keyring.parse(settings.master_keys.reveal())
    assert keyring.primary_id == "rotated-2"
    assert len(keyring.key_ids) == 2
    assert len(settings.api_key_hash_key.reveal()) == 32
    aad = Binding("p", "s", "N", 1)
    assert unseal(keyring, seal(keyring, "v", aad), aad) == "v"


def test_serve_with_bad_configuration_exits_naming_the_setting() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("SECRETS_MASTER_KEYS", "API_KEY_HASH_KEY")}
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "serve", "--port", "1"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 2
    assert "SECRETS_MASTER_KEYS is required" in result.stderr
