"""Configuration fails fast, names the setting, and never prints a key."""

from __future__ import annotations

import base64
import dataclasses
import os
import re
import subprocess
import sys
import types
import typing
from pathlib import Path
from typing import Any

import pytest

from service import cli
from service.crypto import Binding, Keyring, generate_master_key_entry, seal, unseal
from service.settings import ConfigurationError, Secret, Settings
from tests.support.cli import run_cli, setting_variables
from tests.support.paths import ROOT

HASH_KEY = base64.b64encode(os.urandom(32)).decode()


def test_cpu_lists_are_read_as_taskset_writes_them() -> None:
    last = (os.cpu_count() or 1) - 1
    settings = Settings.from_env({"SERVE_CPUS": f"0-{last}", "RELAY_CPUS": f" {last} , 0 "}, require=())
    assert settings.serve_cpus == frozenset(range(last + 1))
    assert settings.relay_cpus == frozenset({0, last})
    unset = Settings.from_env({}, require=())
    assert unset.serve_cpus is None and unset.relay_cpus is None


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
    result = run_cli("serve", "--port", "1", env={}, timeout=60)
    assert result.returncode == 2
    assert "SECRETS_MASTER_KEYS is required" in result.stderr


# --------------------------------------------------------------------------
# Every setting, with a bad value, through the command a user runs
# --------------------------------------------------------------------------


def _kind(field: dataclasses.Field[Any]) -> Any:
    hint = typing.get_type_hints(Settings)[field.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1 else hint


def _is_secret(field: dataclasses.Field[Any]) -> bool:
    kind = _kind(field)
    return kind is Secret or typing.get_origin(kind) is Secret


def _bad_values() -> list[tuple[str, str]]:
    """(variable, value) rows, built from the declared settings: a setting added later is covered too."""
    rows: list[tuple[str, str]] = []
    for field in dataclasses.fields(Settings):
        name = field.metadata["env"]
        rows += [(name, ""), (name, "   ")]  # set but empty is malformed; unset takes the default
        kind = _kind(field)
        if kind is int:
            rows += [(name, "abc"), (name, "1.5"), (name, "-1")]
        elif kind is float:
            rows += [(name, "abc"), (name, "-1"), (name, "nan")]
        elif kind is bool:
            rows += [(name, "maybe")]
        if _is_secret(field):
            rows += [(name + "_FILE", "/nonexistent/secret-file"), (name + "_FILE", "{empty_file}")]
        else:
            # Only secret settings take a file; a _FILE the service would ignore is a mistake.
            rows += [(name + "_FILE", "{empty_file}")]
    # Values the issue saw accepted or turned into tracebacks.
    rows += [
        ("LOG_LEVEL", "loud"),
        ("PORT", "abc"),
        ("PORT", "70000"),
        ("KAFKA_BOOTSTRAP_SERVERS", ":9092"),
        ("SQLITE_SYNCHRONOUS", "OFF"),
        ("DATABASE_URL", "mysql://db/secrets"),
        ("SECRETS_MASTER_KEYS", "nocolon"),
        ("API_KEY_HASH_KEY", "c2hvcnQ="),
        ("SERVE_CPUS", "first"),
        ("SERVE_CPUS", "0,"),
        ("SERVE_CPUS", "3-1"),
        ("RELAY_CPUS", "4096"),
        ("RELAY_CPUS", "0-4096"),
    ]
    return rows


def _good_env(tmp_path: Path) -> dict[str, str]:
    return {
        "SECRETS_MASTER_KEYS": generate_master_key_entry("k1"),
        "API_KEY_HASH_KEY": HASH_KEY,
        "DATABASE_URL": f"sqlite:///{tmp_path}/data/secrets.db",
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9",
    }


def run_main(*args: str) -> int:
    """`secrets-service ARGS` in this process; an exception escaping it is the user's traceback."""
    try:
        code = cli.main(list(args))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except Exception as exc:
        pytest.fail(f"secrets-service {' '.join(args)} ended in a traceback ({type(exc).__name__})")
    return code


@pytest.mark.parametrize(("variable", "value"), _bad_values(), ids=lambda v: v or "empty")
def test_every_setting_with_a_bad_value_exits_2_naming_it(
    variable: str,
    value: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    value = value.replace("{empty_file}", str(empty))
    for name in setting_variables():
        monkeypatch.delenv(name, raising=False)
    env = _good_env(tmp_path)
    if variable.endswith("_FILE"):
        env.pop(variable.removesuffix("_FILE"), None)
    env[variable] = value
    for name, setting in env.items():
        monkeypatch.setenv(name, setting)

    code = run_main("migrate")
    out, err = capsys.readouterr()
    assert code == 2, f"exit {code} for {variable}={value!r}: {err[-500:]}"
    assert variable.removesuffix("_FILE") in err, err
    assert "Traceback" not in err
    assert not out
    if len(value.strip()) > 3 and not variable.endswith("_FILE"):
        assert value not in err, "the message quotes the value"
    assert not (tmp_path / "data").exists(), "the command ran with a bad setting"


# --------------------------------------------------------------------------
# Secret settings from files (Docker and Kubernetes secrets)
# --------------------------------------------------------------------------


def _secret_file(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(0o600)
    return str(path)


def test_every_secret_setting_has_a_file_form(tmp_path: Path) -> None:
    entry = generate_master_key_entry("k1")
    settings = Settings.from_env(
        {
            "SECRETS_MASTER_KEYS_FILE": _secret_file(tmp_path, "master_keys", entry + "\n"),
            "API_KEY_HASH_KEY_FILE": _secret_file(tmp_path, "hash_key", HASH_KEY + "\n"),
            "DATABASE_URL": "postgresql+asyncpg://secrets@postgres:5432/secrets",
            "DATABASE_PASSWORD_FILE": _secret_file(tmp_path, "pg", "p@ss:w/rd\n"),
        }
    )
    assert settings.master_keys.reveal() == entry
    assert settings.api_key_hash_key.reveal() == base64.b64decode(HASH_KEY)
    assert settings.database.postgres_dsn == "postgresql://secrets:p%40ss%3Aw%2Frd@postgres:5432/secrets"
    assert settings.database.for_logs == "postgresql+asyncpg://secrets:********@postgres:5432/secrets"
    for hidden in (entry.split(":")[1], HASH_KEY, "p@ss"):
        assert hidden not in repr(settings)


def test_a_secret_set_both_ways_is_refused(tmp_path: Path) -> None:
    entry = generate_master_key_entry("k1")
    with pytest.raises(ConfigurationError, match="SECRETS_MASTER_KEYS and SECRETS_MASTER_KEYS_FILE"):
        Settings.from_env(
            {
                "SECRETS_MASTER_KEYS": entry,
                "SECRETS_MASTER_KEYS_FILE": _secret_file(tmp_path, "k", entry),
                "API_KEY_HASH_KEY": HASH_KEY,
            }
        )


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite:///./data/secrets.db", "postgresql DATABASE_URL only"),
        ("postgresql+asyncpg://svc:other@db/secrets", "has a password too"),
        ("postgresql+asyncpg://db/secrets", "needs a user name"),
    ],
)
def test_database_password_must_fit_the_url(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as info:
        Settings.from_env(
            {
                "SECRETS_MASTER_KEYS": generate_master_key_entry("k1"),
                "API_KEY_HASH_KEY": HASH_KEY,
                "DATABASE_URL": url,
                "DATABASE_PASSWORD": "hunter2",
            }
        )
    assert "hunter2" not in str(info.value)


def test_a_key_a_command_did_not_ask_for_fails_only_when_used() -> None:
    settings = Settings.from_env({"API_KEY_HASH_KEY": HASH_KEY}, require=("API_KEY_HASH_KEY",))
    assert len(settings.api_key_hash_key.reveal()) == 32
    with pytest.raises(ConfigurationError, match="SECRETS_MASTER_KEYS is required"):
        settings.master_keys.reveal()


def test_example_env_lists_every_setting() -> None:
    text = (ROOT / "config" / "example.env").read_text()
    for field in dataclasses.fields(Settings):
        name = field.metadata["env"]
        assert re.search(rf"^#? ?{name}=", text, re.M), f"config/example.env does not list {name}"
