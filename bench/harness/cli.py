"""Benchmark of one API route (create, read, update) against the bare-framework ceiling.

Usage: bench/run [--route R] [--database D] [--replicas 2] [--quick] [--profile] [--ref REF] ...
(see bench/README.md). One run:

1. starts a local Kafka broker (scripts/kafka-local, dedicated port and a temporary data dir),
   the database (a fresh SQLite file with SQLITE_SYNCHRONOUS=FULL, or a private PostgreSQL
   server from scripts/postgres-local), the real service (relay publishing to Kafka; with
   --replicas 2, two of them behind a loopback nginx) and bench/bare_app.py, on loopback;
   then what the route needs (read and update: 1,000 secrets to work on);
2. warms both up, then alternates wrk rounds (service, bare, service, bare, ...) at the same
   threads/connections/duration, and reports per round req/s, p50/p99, p99/p50, errors,
   non-success answers and the service/bare ratio;
3. runs one more service round with an event-latency probe (a request of the route every
   ~50 ms on its own connection, and kcat reading the topic: latency = its event readable -
   answer received);
4. stops the service, prefills the same database with 1,000,000 secrets, restarts it, and
   runs service rounds (alternating with bare rounds) against the big table;
5. verifies, per round, that every success left what it must in the database (create: a row;
   read: its secret.accessed event; update: a version and its secret.updated event), and
   that the topic holds every event of the outbox; records the peak RSS (VmHWM) of each
   service process;
6. writes bench/results/<UTC timestamp>[-<route>-<database>].json, bench/results/latest.md
   and bench/results/latest-<route>-<database>.md.

Every process it starts is stopped on exit (normal, error, Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
from typing import Any

from . import RESULTS, ROOT, log
from .processes import tail
from .report import markdown
from .run import Bench, run_label


def _cpus(text: str) -> set[int]:
    try:
        cpus = {int(part) for part in text.split(",")}
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of CPU numbers: {text!r}") from None
    if not cpus <= os.sched_getaffinity(0):
        raise argparse.ArgumentTypeError(f"CPUs {sorted(cpus)} are not all available here")
    return cpus


def keep_off(cpus: set[int], machine_cpus: set[int]) -> None:
    """This harness, and so every process it starts unless told otherwise, off the measured CPUs.

    Left to the scheduler, the broker (busy only while the service publishes) and wrk's threads
    (woken by the measured process's answers) take turns on its CPU, a share the other process of
    the comparison does not pay in the same measure. (PostgreSQL is the exception: see
    Bench.start_database.)
    """
    rest = machine_cpus - cpus
    if rest:
        os.sched_setaffinity(0, rest)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/run", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--route",
        choices=("create", "read", "update"),
        default="create",
        help="POST /api/secrets (default); GET /api/secrets/by-name/{name}/value (the audited read); "
        "PUT /api/secrets/{id}",
    )
    p.add_argument(
        "--database",
        choices=("sqlite", "postgresql"),
        default="sqlite",
        help="SQLite file (default) or a private PostgreSQL server (scripts/postgres-local, --pg-port)",
    )
    p.add_argument(
        "--replicas",
        type=int,
        choices=(1, 2),
        default=1,
        help="2 (postgresql only): also rounds against two replicas, and one, behind a loopback nginx",
    )
    p.add_argument("--quick", action="store_true", help="smoke run: 3s rounds, 1 round each, 100k prefill")
    p.add_argument("--duration", type=int, default=None, help="seconds per wrk round (default 10)")
    p.add_argument("--rounds", type=int, default=None, help="alternating rounds on the empty DB (default 3)")
    p.add_argument(
        "--prefill", type=int, default=None, help="secrets to prefill (default 1,000,000; 0 skips)"
    )
    p.add_argument(
        "--prefill-rounds", type=int, default=None, help="service+bare rounds after the prefill (default 2)"
    )
    p.add_argument("--warmup", type=int, default=None, help="warm-up seconds per app (default 5)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument(
        "--relay",
        choices=("inprocess", "separate"),
        default="inprocess",
        help="where the service runs its outbox relay (RELAY_MODE): its own event loop, or a child process",
    )
    p.add_argument(
        "--keys",
        type=int,
        default=256,
        help="API keys the load takes turns with (default 256; the per-key rate limits stay at their defaults); 1: one key, rate limits off",
    )
    p.add_argument("--timeout", type=int, default=5, help="wrk request timeout, seconds")
    p.add_argument("--pause", type=float, default=1.0, help="seconds between rounds")
    p.add_argument("--probe-interval", type=float, default=0.05)
    p.add_argument(
        "--no-status-count",
        action="store_true",
        help="do not count statuses in wrk's response() (count > 399 from summary.errors.status)",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="one extra (unscored) service round under py-spy; stacks to bench/results/profile-*.txt",
    )
    p.add_argument("--service-port", type=int, default=18480)
    p.add_argument("--bare-port", type=int, default=18481)
    p.add_argument("--kafka-port", type=int, default=9492, help="Kafka's port (its controller uses N+1000)")
    p.add_argument("--pg-port", type=int, default=18432, help="the private PostgreSQL server's port")
    p.add_argument(
        "--lb-port",
        type=int,
        default=18490,
        help="with --replicas 2: nginx on N (two replicas) and N+1 (one); the second replica on N+2",
    )
    p.add_argument(
        "--ref",
        default=None,
        help="benchmark service/ as of this git ref (exported to the temp dir) instead of the working tree",
    )
    p.add_argument(
        "--wait-quiet",
        type=int,
        default=0,
        help="wait up to this many seconds for other load on the machine to drop below 0.3 cores",
    )
    p.add_argument(
        "--cpus",
        type=_cpus,
        default=None,
        metavar="LIST",
        help="pin the service (every replica) and the bare app to these CPUs, e.g. 0 or 0,1, and keep "
        "everything else the run starts but PostgreSQL (wrk, Kafka, nginx, the probes) on the others "
        "(default: unpinned)",
    )
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (database, logs, Kafka data)")
    p.add_argument("--no-results", action="store_true", help="do not write bench/results/")
    p.add_argument("--check", action="store_true", help="exit 3 if any target of the issue fails")
    a = p.parse_args(argv)
    # Before keep_off narrows them: the CPUs the database server may use (see Bench.start_database).
    a.machine_cpus = os.sched_getaffinity(0)
    if a.replicas > 1 and a.database != "postgresql":
        p.error("--replicas 2 needs --database postgresql (one SQLite file serves one process)")
    quick = {"duration": 3, "rounds": 1, "prefill": 100_000, "prefill_rounds": 1, "warmup": 2}
    full = {"duration": 10, "rounds": 3, "prefill": 1_000_000, "prefill_rounds": 2, "warmup": 5}
    for key, value in (quick if a.quick else full).items():
        if getattr(a, key) is None:
            setattr(a, key, value)
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.cpus:
        keep_off(args.cpus, args.machine_cpus)
    bench = Bench(args)

    def on_signal(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    try:
        result = asyncio.run(bench.run())
    except KeyboardInterrupt:
        log("interrupted; cleaning up")
        return 130
    except Exception as exc:
        log(f"failed: {type(exc).__name__}: {exc}")
        if bench.service is not None:
            log("service log tail:\n" + tail(bench.service_log))
        return 1
    finally:
        bench.cleanup()
    md = markdown(result)
    if not args.no_results:
        RESULTS.mkdir(exist_ok=True)
        out = RESULTS / f"{result['timestamp']}{run_label(args.route, args.database, args.replicas)}.json"
        out.write_text(json.dumps(result, indent=2) + "\n")
        latest = (
            RESULTS / f"latest{run_label(args.route, args.database, args.replicas) or '-create-sqlite'}.md"
        )
        (RESULTS / "latest.md").write_text(md)
        latest.write_text(md)
        log(f"wrote {out.relative_to(ROOT)}, bench/results/latest.md and {latest.relative_to(ROOT)}")
    print(md)
    if args.check and any(t["pass"] is False for t in result["targets"]):
        return 3
    return 0
