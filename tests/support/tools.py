"""Outside tools some tests drive (docker-compose, nginx, kcat), installed from Debian when missing."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest


def debian_tool(command: str, package: str) -> str:
    """The path of `command`; installs Debian's `package` when it is missing (as root), else skips."""
    found = shutil.which(command)
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip(f"{command} is not installed and cannot be installed here (apt-get install {package})")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    done = subprocess.run(
        ["apt-get", "install", "-y", "-q", package], capture_output=True, text=True, env=env, timeout=600
    )
    found = shutil.which(command)
    if done.returncode != 0 or not found:
        pytest.skip(f"{command} is not installed, and apt-get install {package} failed: {done.stderr[-300:]}")
    return found
