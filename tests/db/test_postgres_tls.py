"""PostgreSQL over verified TLS: DATABASE_URL's sslmode=verify-full and sslrootcert are honoured by every
connection the service opens, and a CA that does not vouch for the server is refused at startup.

The server is the TLS one in TEST_DATABASE_URLS (scripts/postgres-local start --tls, as CI
runs it), or else one this module starts and purges. Its data dir holds ca.pem (the CA
that signed its certificate) and other-ca.pem (an unrelated CA).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from service.db.dialect import open_database
from service.db.plan import Fetch, single
from service.db.url import DatabaseTLSError, DatabaseURL
from tests.support.app import make_env
from tests.support.cli import run_cli
from tests.support.database import fresh_postgres_database
from tests.support.leaks import leaked
from tests.support.paths import ROOT
from tests.support.ports import free_server_port

pytestmark = pytest.mark.postgres

PASSWORD = "pg-pw-0b44e1-DO-NOT-LEAK"  # the server trusts loopback, so any password is accepted
SSL_IN_USE = Fetch("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")


def _configured() -> str | None:
    for url in os.environ.get("TEST_DATABASE_URLS", "").split(","):
        if url.strip().startswith("postgresql") and "sslrootcert=" in url:
            return url.strip()
    return None


@pytest.fixture(scope="module")
def tls_server() -> Iterator[str]:
    """The URL of a TLS-only server's `secrets` database, verified against its own CA."""
    configured = _configured()
    if configured:
        yield configured
        return
    port = free_server_port()
    data = f"/tmp/secrets-service-pg-tls-test-{port}"  # the cluster's OS user must reach it: not under pytest's 0700 tmp
    script = str(ROOT / "scripts" / "postgres-local")
    try:
        started = subprocess.run(
            [script, "start", "--tls", "--port", str(port), "--data", data],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert started.returncode == 0, started.stderr[-2000:]
        yield started.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run(
            [script, "stop", "--port", str(port), "--data", data, "--purge"], capture_output=True, timeout=120
        )


def with_ca(url: str, ca_name: str, password: str | None = PASSWORD) -> str:
    """The same server with a password in the URL and sslrootcert naming `ca_name` beside the real CA."""
    parts = urlsplit(url)
    ca = Path(parse_qs(parts.query)["sslrootcert"][0])
    netloc = parts.netloc if password is None else parts.netloc.replace("@", f":{password}@", 1)
    return f"{parts.scheme}://{netloc}{parts.path}?sslmode=verify-full&sslrootcert={ca.with_name(ca_name)}"


@pytest.fixture
def database_on_tls(tls_server: str) -> Iterator[str]:
    with fresh_postgres_database(with_ca(tls_server, "ca.pem")) as url:
        yield url


async def test_the_pool_and_the_dedicated_connections_all_speak_verified_tls(database_on_tls: str) -> None:
    database = open_database(DatabaseURL.parse(database_on_tls))
    await database.open()
    try:
        assert await database.read(single(SSL_IN_USE)) == [(True,)]
        conn = await database.connect("committer")
        try:
            assert await conn.run(single(SSL_IN_USE)) == [(True,)]
        finally:
            await conn.close()
    finally:
        await database.close()


async def test_a_ca_that_does_not_vouch_for_the_server_is_refused(tls_server: str) -> None:
    database = open_database(DatabaseURL.parse(with_ca(tls_server, "other-ca.pem")))
    with pytest.raises(DatabaseTLSError) as refused:
        await asyncio.wait_for(database.open(), 30)
    message = str(refused.value)
    assert message.startswith(
        "DATABASE_URL's TLS: the server's certificate is not trusted by the CA in sslrootcert"
    )
    assert not leaked(PASSWORD, message)
    with pytest.raises(DatabaseTLSError):
        await asyncio.wait_for(database.connect("committer"), 30)


@pytest.mark.parametrize(
    ("ca_name", "expected"),
    [
        (
            "other-ca.pem",
            "error: DATABASE_URL's TLS: the server's certificate is not trusted by the CA in sslrootcert",
        ),
        (
            f"missing-{uuid.uuid4().hex}.pem",
            "error: DATABASE_URL's TLS: the CA file named by sslrootcert cannot be read",
        ),
    ],
)
@pytest.mark.parametrize("command", [["migrate"], ["serve", "--port", "1"]])
def test_the_commands_refuse_to_start_with_one_clear_line(
    tls_server: str, tmp_path: Path, command: list[str], ca_name: str, expected: str
) -> None:
    done = run_cli(*command, env=make_env(with_ca(tls_server, ca_name)), cwd=tmp_path, timeout=60)
    assert done.returncode == 1
    assert expected in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert not leaked(PASSWORD, done.stdout + done.stderr)
