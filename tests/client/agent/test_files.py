"""The agent's files: exact bytes, 0600 in a 0700 directory, atomic replacement, and only safe names."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest
from secrets_client.agent.files import READY, SecretFiles, atomic_write, valid_name


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_values_are_written_exactly_privately_and_only_when_they_change(tmp_path: Path) -> None:
    directory = tmp_path / "secrets"
    files = SecretFiles(directory)
    value = "no newline at the end, \n one inside, ünïcödé, 🔑, and a NUL \0"
    assert files.write("TOKEN", value) is True
    assert (directory / "TOKEN").read_bytes() == value.encode()
    assert mode(directory) == 0o700
    assert mode(directory / "TOKEN") == 0o600
    assert files.write("TOKEN", value) is False, "an identical value counts as a change"
    assert files.write("TOKEN", "other") is True
    assert files.names() == {"TOKEN"}
    assert files.remove("TOKEN") is True
    assert files.remove("TOKEN") is False
    assert not (directory / "TOKEN").exists()


def test_an_existing_directory_is_made_private(tmp_path: Path) -> None:
    directory = tmp_path / "open"
    directory.mkdir(mode=0o755)
    os.chmod(directory, 0o755)
    SecretFiles(directory)
    assert mode(directory) == 0o700


@pytest.mark.parametrize(
    "name", ["../ESCAPE", "lower", "A/B", "A\n", "", ".ready", "A" * 256, "_X", "Ä", "A B", "/etc/passwd"]
)
def test_only_the_services_names_become_files(tmp_path: Path, name: str) -> None:
    files = SecretFiles(tmp_path / "secrets")
    assert not valid_name(name)
    with pytest.raises(ValueError):
        files.write(name, "v")
    with pytest.raises(ValueError):
        files.remove(name)
    assert list((tmp_path / "secrets").iterdir()) == []


def test_the_agent_leaves_other_files_alone(tmp_path: Path) -> None:
    files = SecretFiles(tmp_path / "secrets")
    (tmp_path / "secrets" / "notes.txt").write_text("mine")
    files.write("A", "1")
    files.mark_ready()
    assert files.names() == {"A"}
    files.clear_ready()
    assert not (tmp_path / "secrets" / READY).exists()
    assert (tmp_path / "secrets" / "notes.txt").read_text() == "mine"


def test_a_write_replaces_the_file_atomically(tmp_path: Path) -> None:
    """The new content arrives under a new inode by rename: an open reader keeps the whole old value."""
    files = SecretFiles(tmp_path / "secrets")
    files.write("ROTATED", "old-value")
    path = tmp_path / "secrets" / "ROTATED"
    before = path.stat().st_ino
    with path.open("rb") as reader:
        files.write("ROTATED", "new-value")
        assert reader.read() == b"old-value"
    assert path.stat().st_ino != before
    assert path.read_bytes() == b"new-value"
    assert [p.name for p in path.parent.iterdir()] == ["ROTATED"], "a temp file was left behind"


def test_a_failed_write_leaves_the_old_value_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "secrets"
    SecretFiles(directory).write("KEPT", "old")

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError):
        atomic_write(directory / "KEPT", b"new")
    monkeypatch.undo()
    assert (directory / "KEPT").read_bytes() == b"old"
    assert [p.name for p in directory.iterdir()] == ["KEPT"]


def test_the_env_file_is_shell_quoted_and_loads_back(tmp_path: Path) -> None:
    env_file = tmp_path / "app.env"
    files = SecretFiles(tmp_path / "secrets", env_file)
    values = {"PLAIN": "abc", "QUOTED": 'it\'s "quoted" $HOME `x`', "MULTI": "a\nb", "EMPTYISH": " "}
    for name, value in values.items():
        files.write(name, value)
    files.write("WITH_NUL", "a\0b")
    files.write_env_file()
    assert mode(env_file) == 0o600
    loaded = subprocess.run(
        ["sh", "-c", f"set -a; . '{env_file}'; set +a; env -0"], capture_output=True, timeout=30, env={}
    )
    assert loaded.returncode == 0
    environment = dict(item.split("=", 1) for item in loaded.stdout.decode().split("\0") if "=" in item)
    for name, value in values.items():
        assert environment[name] == value, name
    assert "WITH_NUL" not in environment


def test_sweep_removes_what_a_crash_left(tmp_path: Path) -> None:
    files = SecretFiles(tmp_path / "secrets")
    leftover = tmp_path / "secrets" / ".secrets-sync-TOKEN.abc123.tmp"
    leftover.write_text("half")
    files.sweep()
    assert not leftover.exists()
