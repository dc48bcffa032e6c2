"""A full disk: writes answer 503 saying so (logged once), reads go on, /readyz reports it, and
everything acknowledged survives. Needs root, to mount a small tmpfs for the database."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.settings import Settings
from tests.support.app import make_env, make_project
from tests.support.service import Service

pytestmark = pytest.mark.slow


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


async def test_a_full_disk_is_a_503_that_says_so_and_nothing_acknowledged_is_lost(
    small_disk: Path, tmp_path: Path
) -> None:
    env = make_env(f"sqlite:///{small_disk}/secrets.db")
    project = await make_project(Settings.from_env(env), "p")
    service = Service(env, tmp_path)
    await service.start_healthy()
    headers = {"X-Auth-Token": project["apiKey"]}
    acknowledged: list[str] = []
    refused = []
    try:
        async with httpx.AsyncClient(base_url=service.url, timeout=30) as http:
            for i in range(400):
                response = await http.post(
                    "/api/secrets", json={"name": f"BIG_{i}", "value": "x" * 10000}, headers=headers
                )
                if response.status_code == 201:
                    acknowledged.append(response.json()["id"])
                else:
                    refused.append(response)
                    if len(refused) >= 5:
                        break
            assert refused, "the disk never filled"
            assert {r.status_code for r in refused} == {503}
            assert refused[0].json() == {
                "error": "Service Unavailable",
                "message": "Storage is full: writes resume once space is freed; retry later",
            }
            assert (await http.get("/readyz")).status_code == 503
            assert (await http.get("/api/secrets", headers=headers)).status_code == 200, "reads go on"

            subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
            after = await http.post("/api/secrets", json={"name": "AFTER", "value": "v"}, headers=headers)
            assert after.status_code == 201
            acknowledged.append(after.json()["id"])
            assert (await http.get("/readyz")).status_code == 200
        await service.stop()
    finally:
        service.kill()

    log = service.log_text().decode()
    assert log.count("storage is full") == 1, "logged once, not per request"
    assert "has room again" in log
    assert "Traceback" not in log and "unhandled" not in log
    with sqlite3.connect(small_disk / "secrets.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        stored = {row[0] for row in db.execute("SELECT id FROM secrets")}
    assert set(acknowledged) <= stored, "an acknowledged create was lost"
