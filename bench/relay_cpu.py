#!/usr/bin/env python3
"""CPU per event of a separate outbox relay, at a steady commit rate, without HTTP or wrk.

    scripts/kafka-local start
    .venv/bin/python bench/relay_cpu.py [--rate 1800] [--per-commit 10] [--seconds 15] [--cpus 0]

A driver commits outbox rows into a fresh SQLite file (`synchronous=FULL`), `--per-commit`
rows a transaction, `--rate` rows a second, and after each commit writes a byte to the
stdin of a real `secrets-service relay --wake-stdin`, as `serve --relay separate` does.
The relay publishes to the Kafka at KAFKA_BOOTSTRAP_SERVERS (default 127.0.0.1:9092), on a
topic of its own. The figure is the relay process's CPU time (every thread, from /proc)
over the measured seconds, divided by the rows committed in them, after a warm-up.

What it is for: A/B runs of the relay's code (`PYTHONPATH=<tree>`), which a wrk round
cannot resolve: the relay is ~10% of a create's CPU there, and the machine moves a round
by more than that. A low `--rate` with `--per-commit 1` shows the cost of a round alone.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import service
from service.clock import SystemClock, iso_utc
from service.crypto import generate_master_key_entry
from service.db.plan import Execute
from service.events.model import new_event
from service.events.relay import CursorProgress
from service.events.sql import insert_events

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness.processes import cpu_seconds

# The relay runs from the tree this script imported (PYTHONPATH=<tree> for an A/B run).
TREE = Path(service.__file__).resolve().parent.parent


def insert_created_events(n: int) -> Execute:
    """n events shaped as the service's secret.created, as the service inserts them."""
    at = iso_utc(SystemClock().now())
    events = []
    for _ in range(n):
        secret_id = str(uuid.uuid4())
        data = {"id": secret_id, "projectId": "project_bench", "name": "BENCH_SECRET", "version": 1}
        events.append(new_event("secret.created", secret_id, data, at))
    return insert_events(events)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=1800, help="outbox rows committed per second")
    parser.add_argument("--per-commit", type=int, default=10, help="rows per commit (one wake-up each)")
    parser.add_argument("--seconds", type=float, default=15.0, help="measured seconds (after 3 s of warm-up)")
    parser.add_argument("--cpus", help="CPUs to pin the relay to, e.g. 0 (as bench/run --cpus 0 does)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="relay-cpu-") as tmp:
        db_path = Path(tmp) / "secrets.db"
        env = {
            **os.environ,
            "DATABASE_URL": f"sqlite:///{db_path}",
            "SECRETS_MASTER_KEYS": generate_master_key_entry("bench"),
            "KAFKA_TOPIC": f"relay-cpu-{uuid.uuid4().hex[:8]}",
            "SQLITE_SYNCHRONOUS": "FULL",
        }
        command = [sys.executable, "-m", "service.cli"]
        subprocess.run([*command, "migrate"], env=env, cwd=TREE, check=True, capture_output=True, timeout=60)
        with open(Path(tmp) / "relay.log", "wb") as log:
            relay = subprocess.Popen(
                [*command, "relay", "--wake-stdin"], env=env, cwd=TREE, stdin=subprocess.PIPE, stderr=log
            )
        assert relay.stdin is not None
        try:
            if args.cpus:
                os.sched_setaffinity(relay.pid, {int(cpu) for cpu in args.cpus.split(",")})
            time.sleep(4)  # its producer connects and the topic is created
            db = sqlite3.connect(db_path, isolation_level=None)
            db.execute("PRAGMA busy_timeout=5000")

            def commit_for(seconds: float) -> int:
                interval = args.per_commit / args.rate
                committed, start = 0, time.monotonic()
                due = start
                while time.monotonic() - start < seconds:
                    statement = insert_created_events(args.per_commit)
                    db.execute("BEGIN IMMEDIATE")
                    db.execute(statement.sql, statement.params)
                    db.execute("COMMIT")
                    relay.stdin.write(b".")
                    relay.stdin.flush()
                    committed += args.per_commit
                    due += interval
                    time.sleep(max(0.0, due - time.monotonic()))
                return committed

            commit_for(3.0)
            time.sleep(1.0)
            before = cpu_seconds(relay.pid)
            committed = commit_for(args.seconds)
            time.sleep(1.0)  # the last rounds publish
            used = cpu_seconds(relay.pid) - before
            unpublished = db.execute(CursorProgress().count_pending().sql).fetchone()[0]
            db.close()
        finally:
            relay.stdin.close()
            try:
                relay.wait(15)
            except subprocess.TimeoutExpired:
                relay.kill()
        if relay.returncode not in (0, None) or unpublished:
            # The relay could not publish (no broker?): its CPU says nothing of publishing.
            sys.stderr.write((Path(tmp) / "relay.log").read_text()[-2000:])
            print(f"error: {unpublished} events left unpublished; is Kafka up?", file=sys.stderr)
            return 1
    print(
        f"{TREE}: {committed:,} events in {args.seconds:.0f}s ({args.per_commit} a commit): relay CPU {used:.2f}s,"
        f" {1e6 * used / committed:.1f} us/event, {used / args.seconds:.3f} cores"
    )
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
