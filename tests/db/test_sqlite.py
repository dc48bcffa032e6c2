"""SQLite files: private from the first byte, in a directory made for them."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from service.settings import Settings
from tests.support.app import create, make_env, make_project, serving


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_database_files_are_private_whatever_creates_them(tmp_path: Path) -> None:
    directory = tmp_path / "not-yet" / "data"
    settings = Settings.from_env(make_env(f"sqlite:///{directory}/secrets.db"))
    project = await make_project(settings, "p")  # the CLI's path: opens, migrates, writes
    async with serving(settings) as client:
        assert (await create(client, project)).status_code == 201
        files = sorted(directory.glob("secrets.db*"))
        assert {f.name for f in files} >= {"secrets.db", "secrets.db-wal", "secrets.db-shm"}
        assert {f.name: mode(f) for f in files} == {f.name: 0o600 for f in files}
    assert mode(directory) == 0o700


async def test_an_existing_world_readable_database_is_made_private(tmp_path: Path) -> None:
    path = tmp_path / "secrets.db"
    path.touch(mode=0o644)
    path.chmod(0o644)
    settings = Settings.from_env(make_env(f"sqlite:///{path}"))
    await make_project(settings, "p")
    assert mode(path) == 0o600


@pytest.mark.parametrize("url", ["sqlite:///", "mysql://db/secrets"])
def test_a_database_url_that_names_no_usable_database_is_a_setting_error(url: str) -> None:
    from service.settings import ConfigurationError

    with pytest.raises(ConfigurationError, match="DATABASE_URL"):
        Settings.from_env(make_env(url))


async def test_other_connections_coming_and_going_lose_no_committed_write(tmp_path: Path) -> None:
    """A CLI command (or a second process) opening and closing the file while the service writes.

    Closing any descriptor of a file drops every POSIX lock the process holds on it; if
    opening a database did that, the next process to close its connection would take
    itself for the last one, checkpoint and delete the WAL under the service's feet, and
    every later commit would go to a deleted file: lost to every other reader, and to a crash.
    """
    import subprocess
    import sys

    path = tmp_path / "secrets.db"
    count = f"import sqlite3; print(sqlite3.connect({str(path)!r}).execute('SELECT COUNT(*) FROM secrets').fetchone()[0])"
    settings = Settings.from_env(make_env(f"sqlite:///{path}"))
    project = await make_project(settings, "p")
    async with serving(settings) as client:
        for round_ in range(3):
            # In this process: another store opens the same file and closes it (what a CLI command does).
            await make_project(settings, f"other-{round_}")
            for i in range(20):
                assert (await create(client, project, name=f"R{round_}_{i}")).status_code == 201
            # Another process reads what is committed, then closes its connection.
            seen = subprocess.run(
                [sys.executable, "-c", count], capture_output=True, text=True, timeout=30, check=True
            )
            assert int(seen.stdout) == 20 * (round_ + 1), (
                f"round {round_}: another process sees {seen.stdout.strip()} rows"
            )
