"""The `secrets-service` command as an operator uses it: clear errors, no tracebacks, only the keys it needs."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import sqlite3
import stat
import uuid
from pathlib import Path

import pytest

from service.crypto import generate_master_key_entry
from service.settings import Settings
from tests.support.app import make_env, serving
from tests.support.cli import run_cli


def keys() -> dict[str, str]:
    return {
        "SECRETS_MASTER_KEYS": generate_master_key_entry("k1"),
        "API_KEY_HASH_KEY": base64.b64encode(os.urandom(32)).decode(),
    }


@pytest.fixture
def db_env(tmp_path: Path) -> dict[str, str]:
    """Keys and a SQLite database of the test's own."""
    return {**keys(), "DATABASE_URL": f"sqlite:///{tmp_path}/db/secrets.db"}


def no_traceback(stderr: str) -> bool:
    return "Traceback" not in stderr and 'File "' not in stderr


def test_keys_issue_for_a_missing_project_is_refused_without_a_traceback(db_env: dict[str, str]) -> None:
    done = run_cli("keys", "issue", "project_nope", env=db_env)
    assert done.returncode == 1, done.stderr
    assert not done.stdout, "a key was printed for a project that does not exist"
    assert "No project with id project_nope" in done.stderr
    assert no_traceback(done.stderr), done.stderr


@pytest.mark.parametrize("name", ["", "   ", "\t"])
def test_projects_create_refuses_an_empty_name(db_env: dict[str, str], tmp_path: Path, name: str) -> None:
    done = run_cli("projects", "create", name, env=db_env)
    assert done.returncode == 1, done.stderr
    assert not done.stdout
    assert "A project name must not be empty" in done.stderr
    assert no_traceback(done.stderr)
    assert not (tmp_path / "db").exists(), "the database was touched for a refused name"


def test_projects_create_stores_the_name_trimmed(db_env: dict[str, str]) -> None:
    done = run_cli("projects", "create", "  my-project ", env=db_env)
    assert done.returncode == 0, done.stderr
    project_id = json.loads(done.stdout)["projectId"]
    path = db_env["DATABASE_URL"].removeprefix("sqlite:///")
    with contextlib.closing(sqlite3.connect(path)) as db:
        (name,) = db.execute("SELECT name FROM projects WHERE id = ?", (project_id,)).fetchone()
    assert name == "my-project"


def test_one_shot_commands_keep_stderr_for_errors(db_env: dict[str, str]) -> None:
    done = run_cli("projects", "create", "quiet", env=db_env)
    assert done.returncode == 0
    assert done.stderr == "", "a command that worked wrote to stderr"
    assert {"projectId", "apiKeyId", "apiKey"} <= set(json.loads(done.stdout))
    # --verbose brings the log back, at LOG_LEVEL.
    verbose = run_cli("--verbose", "migrate", env={**db_env, "LOG_LEVEL": "DEBUG"})
    assert verbose.returncode == 0
    assert "DEBUG" in verbose.stderr or "INFO" in verbose.stderr


def test_keys_generate_with_a_bad_key_id_is_a_usage_error(db_env: dict[str, str]) -> None:
    done = run_cli("keys", "generate", "--key-id", "bad:id", env={})
    assert done.returncode == 2
    assert "--key-id" in done.stderr
    assert no_traceback(done.stderr)
    assert not done.stdout


def test_a_malformed_port_does_not_break_commands_that_do_not_serve() -> None:
    done = run_cli("keys", "generate", "--key-id", "k2", env={"PORT": "abc"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("k2:")


def test_serve_with_a_malformed_setting_exits_2_without_a_traceback(db_env: dict[str, str]) -> None:
    done = run_cli("serve", "--port", "1", env={**db_env, "LOG_LEVEL": "loud"})
    assert done.returncode == 2
    assert "LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL" in done.stderr
    assert no_traceback(done.stderr)


def test_serve_needs_both_keys(db_env: dict[str, str]) -> None:
    env = {k: v for k, v in db_env.items() if k != "SECRETS_MASTER_KEYS"}
    done = run_cli("serve", "--port", "1", env=env)
    assert done.returncode == 2
    assert "SECRETS_MASTER_KEYS is required" in done.stderr


def test_migrate_makes_a_private_data_directory(tmp_path: Path) -> None:
    done = run_cli("migrate", env=keys(), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE((tmp_path / "data").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "data" / "secrets.db").stat().st_mode) == 0o600


def test_a_database_file_that_cannot_be_opened_is_named(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    path = tmp_path / "a-file" / "secrets.db"
    done = run_cli("migrate", env={"DATABASE_URL": f"sqlite:///{path}"})
    assert done.returncode == 1
    assert str(path) in done.stderr and "DATABASE_URL" in done.stderr
    assert no_traceback(done.stderr), done.stderr


def test_an_unreachable_postgresql_is_named_without_a_traceback() -> None:
    done = run_cli("migrate", env={"DATABASE_URL": "postgresql+asyncpg://svc:hunter2@127.0.0.1:9/secrets"})
    assert done.returncode == 1
    assert "PostgreSQL cannot be reached" in done.stderr and "DATABASE_URL" in done.stderr
    assert "hunter2" not in done.stderr
    assert no_traceback(done.stderr), done.stderr


# --------------------------------------------------------------------------
# Settings from an env file (the keys `make run` wrote to data/dev.env)
# --------------------------------------------------------------------------


def write_env_file(path: Path, env: dict[str, str]) -> Path:
    path.write_text("# written by the test\n" + "".join(f"{k}={v}\n" for k, v in env.items()))
    path.chmod(0o600)
    return path


async def test_env_file_option_and_variable_give_the_commands_their_keys(
    db_env: dict[str, str], tmp_path: Path
) -> None:
    env_file = write_env_file(tmp_path / "dev.env", db_env)
    created = run_cli("--env-file", str(env_file), "projects", "create", "from-a-file", env={})
    assert created.returncode == 0, created.stderr
    project = json.loads(created.stdout)
    issued = run_cli("keys", "issue", project["projectId"], env={"SECRETS_ENV_FILE": str(env_file)})
    assert issued.returncode == 0, issued.stderr
    second = json.loads(issued.stdout)

    # Both keys open the project in a service run on the same settings.
    settings = Settings.from_env(make_env(db_env["DATABASE_URL"], **db_env))
    async with serving(settings) as client:
        for key in (project["apiKey"], second["apiKey"]):
            response = await client.get("/api/secrets", headers={"X-Auth-Token": key})
            assert response.status_code == 200


def test_the_environment_wins_over_the_env_file(db_env: dict[str, str], tmp_path: Path) -> None:
    env_file = write_env_file(tmp_path / "dev.env", {**db_env, "LOG_LEVEL": "INFO"})
    done = run_cli("--env-file", str(env_file), "migrate", env={"LOG_LEVEL": "loud"})
    assert done.returncode == 2
    assert "LOG_LEVEL" in done.stderr


def test_a_missing_env_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.env"
    for args, env in (
        (("--env-file", str(missing), "migrate"), {}),
        (("migrate",), {"SECRETS_ENV_FILE": str(missing)}),
    ):
        done = run_cli(*args, env=env)
        assert done.returncode == 2
        assert str(missing) in done.stderr
        assert no_traceback(done.stderr)


def test_a_malformed_env_file_line_is_named_by_number_not_quoted(tmp_path: Path) -> None:
    secret = "hunter2-" + uuid.uuid4().hex
    env_file = tmp_path / "bad.env"
    env_file.write_text(f"LOG_LEVEL=INFO\n{secret}\n")
    done = run_cli("--env-file", str(env_file), "migrate", env={})
    assert done.returncode == 2
    assert "line 2" in done.stderr
    assert secret not in done.stderr


# --------------------------------------------------------------------------
# Each command asks only for the keys it uses
# --------------------------------------------------------------------------


def test_keys_revoke_needs_no_key(db_env: dict[str, str]) -> None:
    created = json.loads(run_cli("projects", "create", "p", env=db_env).stdout)
    done = run_cli("keys", "revoke", created["apiKeyId"], env={"DATABASE_URL": db_env["DATABASE_URL"]})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"apiKeyId": created["apiKeyId"], "revoked": True}


def test_projects_create_needs_the_hash_key_but_no_master_key(db_env: dict[str, str]) -> None:
    without_master = {k: v for k, v in db_env.items() if k != "SECRETS_MASTER_KEYS"}
    assert run_cli("projects", "create", "p", env=without_master).returncode == 0
    without_hash = {k: v for k, v in db_env.items() if k != "API_KEY_HASH_KEY"}
    done = run_cli("projects", "create", "p", env=without_hash)
    assert done.returncode == 2
    assert "API_KEY_HASH_KEY is required" in done.stderr


def test_keys_rewrap_needs_the_master_keys_only(db_env: dict[str, str]) -> None:
    without_hash = {k: v for k, v in db_env.items() if k != "API_KEY_HASH_KEY"}
    done = run_cli("keys", "rewrap", env=without_hash)
    assert done.returncode == 0, done.stderr
    without_master = {k: v for k, v in db_env.items() if k != "SECRETS_MASTER_KEYS"}
    assert run_cli("keys", "rewrap", env=without_master).returncode == 2


@pytest.mark.kafka
async def test_audit_consume_needs_only_kafka(kafka_bootstrap: str, tmp_path: Path) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    topic = "test-" + uuid.uuid4().hex[:10]
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap, request_timeout_ms=10000)
    await asyncio.wait_for(admin.start(), 30)
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()
    output = tmp_path / "audit.jsonl"
    args = ("audit-consume", "--output", str(output), "--group", "g-" + topic, "--idle-exit-seconds", "1")
    env = {"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "KAFKA_TOPIC": topic}
    done = await asyncio.to_thread(run_cli, *args, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "SECRETS_MASTER_KEYS" not in done.stderr


def test_audit_consume_without_a_broker_says_so_without_a_traceback(tmp_path: Path) -> None:
    done = run_cli(
        "audit-consume",
        "--output",
        str(tmp_path / "audit.jsonl"),
        "--idle-exit-seconds",
        "1",
        env={"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9"},
        cwd=tmp_path,
    )
    assert done.returncode == 1
    assert "KAFKA_BOOTSTRAP_SERVERS" in done.stderr
    assert no_traceback(done.stderr), done.stderr
