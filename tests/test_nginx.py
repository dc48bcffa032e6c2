"""The `scaled` profile's nginx, run for real: its own errors come out in the service's JSON shape.

The test runs config/nginx.conf with its paths, port and upstream addresses moved onto
loopback and this test's directory; everything else is the file as shipped.
"""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.paths import ROOT
from tests.support.ports import free_port
from tests.support.tools import debian_tool
from tests.support.waiting import poll_until

pytestmark = pytest.mark.slow


def local_conf(tmp_path: Path, port: int, replicas: tuple[int, int]) -> Path:
    text = (ROOT / "config" / "nginx.conf").read_text()
    moves = [
        (r"pid \S+;", f"pid {tmp_path}/nginx.pid;"),
        (r"error_log \S+ (\w+);", rf"error_log {tmp_path}/error.log \1;"),
        (r"access_log /var/log/nginx/access.log", f"access_log {tmp_path}/access.log"),
        (r"listen 80;", f"listen 127.0.0.1:{port};"),
        (r"server secrets-a:8000", f"server 127.0.0.1:{replicas[0]}"),
        (r"server secrets-b:8000", f"server 127.0.0.1:{replicas[1]}"),
        # The 504 below should not take the shipped 30 s.
        (r"proxy_read_timeout 30s;", "proxy_read_timeout 1s;"),
    ]
    for pattern, replacement in moves:
        text, count = re.subn(pattern, replacement, text)
        assert count >= 1, f"config/nginx.conf no longer has {pattern!r}: update this test"
    conf = tmp_path / "nginx.conf"
    conf.write_text(text)
    return conf


@contextlib.contextmanager
def running_nginx(nginx: str, conf: Path, prefix: Path) -> Iterator[None]:
    checked = subprocess.run(
        [nginx, "-t", "-p", str(prefix), "-c", str(conf)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stderr
    process = subprocess.Popen(
        [nginx, "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


def assert_service_error(response: httpx.Response, status: int) -> None:
    assert response.status_code == status
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers.get("cache-control") == "no-store"
    body = response.json()
    assert set(body) == {"error", "message"}, body
    assert body["error"] and body["message"]


async def test_nginx_answers_its_own_errors_as_the_services_json(tmp_path: Path) -> None:
    nginx = debian_tool("nginx", "nginx-light")
    port, replica_a, replica_b = free_port(), free_port(), free_port()
    conf = local_conf(tmp_path, port, (replica_a, replica_b))
    (tmp_path / "logs").mkdir()
    with running_nginx(nginx, conf, tmp_path):
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=20) as http:

            async def up() -> bool:
                try:
                    await http.get("/healthz")
                except httpx.TransportError:
                    return False
                return True

            await poll_until(up, 30, what="nginx to listen")

            # 413: refused at the edge, before any replica sees the body.
            too_big = await http.post(
                "/api/secrets", content=b"x" * (300 * 1024), headers={"Content-Type": "application/json"}
            )
            assert_service_error(too_big, 413)

            # 502: no replica listens.
            assert_service_error(await http.get("/api/secrets"), 502)

            # 504: the replicas take the connection and never answer.
            silent = []
            for replica in (replica_a, replica_b):
                listener = socket.socket()
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                listener.bind(("127.0.0.1", replica))
                listener.listen(16)
                silent.append(listener)
            try:
                assert_service_error(await http.get("/api/secrets"), 504)
            finally:
                for listener in silent:
                    listener.close()
