"""The `secrets-service` command as a user runs it: a process with an environment of the test's choosing."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

from service.settings import Settings
from tests.support.paths import ROOT


def setting_variables() -> set[str]:
    """Every variable the service reads, with the `_FILE` forms and the env-file pointer."""
    names = {field.metadata["env"] for field in dataclasses.fields(Settings)}
    return names | {name + "_FILE" for name in names} | {"SECRETS_ENV_FILE"}


def clean_environ(**env: str) -> dict[str, str]:
    """The test process's environment without any setting, plus `env`."""
    base = {k: v for k, v in os.environ.items() if k not in setting_variables()}
    return {**base, "PYTHONUNBUFFERED": "1", **env}


def run_cli(
    *args: str, env: dict[str, str], cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`secrets-service ARGS` in a process of its own, with only `env` for settings."""
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        env={**clean_environ(**env), "PYTHONPATH": str(ROOT)},
        cwd=cwd or ROOT,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=timeout,
    )
