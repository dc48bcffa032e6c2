"""The agent's directory: one file per secret, written atomically, private, and nothing else touched.

Each secret is `DIR/NAME` holding exactly the value's UTF-8 bytes (no newline added),
mode 0600 in a 0700 directory. A write goes to a temp file in the same directory, is
fsynced, renamed over the old file, and the directory is fsynced: a reader sees the old
value or the new one, never a mix, also across a crash. Only names of the service's
form (`^[A-Z][A-Z0-9_]*$`) are ever written or removed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import tempfile
from datetime import UTC, datetime
from pathlib import Path

logger = logging.getLogger("secrets_client.agent")

NAME = re.compile(r"[A-Z][A-Z0-9_]{0,254}")
READY = ".ready"
_TEMP_PREFIX = ".secrets-sync-"
_TEMP = re.compile(r"\.secrets-sync-.*\.tmp")


def valid_name(name: str) -> bool:
    """A secret name that is safe as a file name: the service's pattern, whole (no newline, no path)."""
    return NAME.fullmatch(name) is not None


def atomic_write(path: Path, data: bytes) -> None:
    """Replace `path` with `data`: temp file (0600) in the same directory, fsync, rename, fsync the directory."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f"{_TEMP_PREFIX}{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SecretFiles:
    """DIR/NAME files, the optional env file, and the DIR/.ready marker."""

    def __init__(self, directory: Path, env_file: Path | None = None) -> None:
        self.directory = directory
        self.env_file = env_file
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        if env_file is not None:
            env_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        if not valid_name(name):
            raise ValueError("not a secret name of the form ^[A-Z][A-Z0-9_]*$")
        return self.directory / name

    def write(self, name: str, value: str) -> bool:
        """Write a value; False when the file already held exactly these bytes (nothing to do)."""
        path = self.path(name)
        data = value.encode("utf-8")
        try:
            if path.read_bytes() == data:
                os.chmod(path, 0o600)
                return False
        except FileNotFoundError:
            pass
        atomic_write(path, data)
        return True

    def remove(self, name: str) -> bool:
        """Remove a secret's file; False when there was none."""
        try:
            self.path(name).unlink()
        except FileNotFoundError:
            return False
        _fsync_directory(self.directory)
        return True

    def exists(self, name: str) -> bool:
        return self.path(name).is_file()

    def names(self) -> set[str]:
        """The secret files in the directory (other files are not the agent's and are left alone)."""
        return {
            entry.name for entry in self.directory.iterdir() if valid_name(entry.name) and entry.is_file()
        }

    def sweep(self) -> None:
        """Remove temp files a crash left behind."""
        for entry in self.directory.iterdir():
            if _TEMP.fullmatch(entry.name):
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()

    def write_env_file(self) -> None:
        """Every secret as NAME='value' (shell-quoted; `set -a; . FILE` loads it); values holding NUL are left out."""
        if self.env_file is None:
            return
        lines = []
        for name in sorted(self.names()):
            value = (self.directory / name).read_bytes().decode("utf-8")
            if "\0" in value:
                logger.warning("%s is not in the env file: an environment variable cannot hold a NUL", name)
                continue
            lines.append(f"{name}={shlex.quote(value)}\n")
        atomic_write(self.env_file, "".join(lines).encode("utf-8"))

    def mark_ready(self) -> None:
        atomic_write(self.directory / READY, datetime.now(UTC).isoformat().encode())

    def clear_ready(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.directory / READY).unlink()
