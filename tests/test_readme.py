"""The README's Try it and Commands blocks, run as written against `make run` in a fresh clone.

The clone is of the committed tree (what a user gets), with a `make install` of its own.
Two things are moved, each only where the README names it: the HTTP port and the Kafka
address (this machine may already serve 127.0.0.1:8000, and the suite's broker may live
elsewhere), and the topic, so that the blocks read this run's events only.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.cli import clean_environ
from tests.support.kafka import wait_for_records
from tests.support.paths import ROOT
from tests.support.ports import free_port
from tests.support.tools import debian_tool

pytestmark = [pytest.mark.slow, pytest.mark.kafka]

README = ROOT / "README.md"
DEFAULT_HTTP = "127.0.0.1:8000"
DEFAULT_KAFKA = "127.0.0.1:9092"
DEFAULT_TOPIC = "secret-events"


def section_blocks(text: str, heading: str) -> list[str]:
    """The ```sh blocks of one `## heading` section (up to the next `## `), subsections included."""
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"the README has no '## {heading}' section"
    blocks = re.findall(r"^```sh\n(.*?)^```", match.group(1), re.M | re.S)
    assert blocks, f"the README's {heading} section has no sh block"
    return blocks


def moved(block: str, http: str, kafka: str, topic: str) -> str:
    return (
        block.replace(DEFAULT_HTTP, http)
        .replace(f"-b {DEFAULT_KAFKA}", f"-b {kafka}")
        .replace(f"-t {DEFAULT_TOPIC}", f"-t {topic}")
    )


def test_the_readme_blocks_name_the_defaults_make_run_uses() -> None:
    text = README.read_text()
    try_it = "\n".join(section_blocks(text, "Try it"))
    assert DEFAULT_HTTP in try_it and f"-b {DEFAULT_KAFKA}" in try_it and f"-t {DEFAULT_TOPIC}" in try_it
    dev_run = (ROOT / "scripts" / "dev-run").read_text()
    assert 'port="${PORT:-8000}"' in dev_run and '"${HOST:-127.0.0.1}"' in dev_run


@contextlib.contextmanager
def make_run(clone: Path, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        process = subprocess.Popen(
            ["make", "run"], cwd=clone, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)


def wait_healthy(process: subprocess.Popen[bytes], url: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"make run exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    raise AssertionError(f"make run not serving within {timeout:.0f}s:\n{log.read_text()[-3000:]}")


def run_block(block: str, clone: Path, env: dict[str, str]) -> str:
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, (
        f"a README block failed ({done.returncode}):\n{block}\n--\n{done.stderr[-3000:]}"
    )
    return done.stdout


async def test_try_it_and_commands_work_word_for_word_after_make_run(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    debian_tool("kcat", "kcat")
    text = README.read_text()
    try_it, commands = section_blocks(text, "Try it"), section_blocks(text, "Commands")

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True, timeout=120)
    port = free_port()
    topic = "readme-" + uuid.uuid4().hex[:10]
    # What the terminal running `make run` has: nothing of ours but the moved port and broker.
    env = clean_environ(PORT=str(port), KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap, KAFKA_TOPIC=topic)
    env.pop("VIRTUAL_ENV", None)
    env["PATH"] = ":".join(p for p in env["PATH"].split(":") if not p.startswith(str(ROOT)))
    # The second terminal: the README's own commands, with the same broker and topic in view.
    shell = {**env}
    shell.pop("PORT")
    log = tmp_path / "make-run.log"
    with make_run(clone, env, log) as process:
        wait_healthy(process, f"http://127.0.0.1:{port}", log, timeout=240)

        outputs = []
        for block in try_it:
            if "kcat" in block:
                # A person reads on before typing it: the relay publishes a moment after the 201.
                await wait_for_records(kafka_bootstrap, topic, lambda records: len(records) >= 1, timeout=60)
            outputs.append(run_block(moved(block, f"127.0.0.1:{port}", kafka_bootstrap, topic), clone, shell))
        out = "\n".join(outputs)
        # curl prints its JSON without a newline: read each document where it starts.
        decoder = json.JSONDecoder()
        created, _ = decoder.raw_decode(out, out.index('{"id"'))
        assert created["name"] == "OPENAI_API_KEY"
        listed, listed_end = decoder.raw_decode(out, out.index('[{"id"'))
        assert [s["id"] for s in listed] == [created["id"]]
        assert f"key={created['id']}" in out and "secret.created" in out, "kcat did not show the event"
        value, _ = decoder.raw_decode(out, out.index('{"id"', listed_end))
        assert (value["id"], value["value"]) == (created["id"], "sk-..."), "the value read"

        out = "\n".join(run_block(b, clone, shell) for b in commands)
        answers = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        assert any(a.get("apiKey", "").startswith("sk-lw-") for a in answers), (
            "projects create printed no key"
        )
        assert {"revoked": True}.items() <= next(a for a in answers if "revoked" in a).items()
        assert any(line.startswith("k2:") for line in out.splitlines()), "keys generate --key-id k2"
        assert "rewrapped" in out
        audit = [json.loads(line) for line in (clone / "data" / "audit.jsonl").read_text().splitlines()]
        assert ("secret.created", created["id"]) in {(a["type"], a["data"]["secretId"]) for a in audit}, (
            "audit-consume missed the event"
        )
        assert "valuesPerKeyId" in out, "keys status"
        assert "usage: secrets-service serve" in out
