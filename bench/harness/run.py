"""Bench: one run, from starting Kafka, the database, the service and the bare app to the result dict."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import json
import os
import secrets as pysecrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from . import BENCH, RESULTS, ROOT, Database, log
from .balancer import TEMPLATE as NGINX_TEMPLATE
from .balancer import nginx_command, nginx_config
from .load import event_probe, http, wrk
from .processes import (
    Procs,
    children_cpu,
    cpu_seconds,
    descendants,
    machine_cpu,
    pid_from_file,
    port_free,
    proc_status,
    tree_cpu_seconds,
    wait_until,
)
from .report import compute_targets, machine, summarize_profile
from .routes import Route, make_route

BIN = Path(sys.executable).parent
SERVICE_BIN = BIN / "secrets-service"
VERSIONS_KEPT = 10
# Rounds against the service: directly (one replica), or through the balancer to one or to two replicas.
SERVICE_KINDS = ("service", "lb1", "lb2")


def tree_hash(directory: Path) -> str:
    """sha256 over the .py files of a directory: which service code a result belongs to."""
    h = hashlib.sha256()
    for path in sorted(directory.rglob("*.py")):
        h.update(str(path.relative_to(directory)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def med(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def run_label(route: str, database: str, replicas: int) -> str:
    """What a results file name says after its timestamp: nothing for the default run (create, SQLite)."""
    if (route, database, replicas) == ("create", "sqlite", 1):
        return ""
    return f"-{route}-{database}" + (f"-{replicas}replicas" if replicas > 1 else "")


# Issues API keys in one process (a `keys issue` each would cost a Python start per key).
_ISSUE_KEYS = """
import asyncio, sys
from service.accounts import admin
from service.accounts.model import SCOPES
from service.clock import SystemClock
from service.db.dialect import open_store
from service.settings import Settings

async def main():
    settings = Settings.from_env()
    project, count, scopes = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    async with open_store(settings.database, settings.sqlite_synchronous) as store:
        for _ in range(count):
            key = await admin.issue_api_key(
                store, settings.api_key_hash_key.reveal(), SystemClock(), project, scopes or SCOPES
            )
            print(key.api_key)

asyncio.run(main())
"""


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.procs = Procs()
        self.run_id = pysecrets.token_hex(3).upper()
        self.tmp = Path(tempfile.mkdtemp(prefix="secrets-bench-"))
        self.db_path = self.tmp / "secrets.db"
        self.topic = f"bench-{self.run_id.lower()}"
        self.services: list[subprocess.Popen[bytes]] = []  # the replicas; the first is measured directly
        self.service_logs: list[Path] = []
        self.bare: subprocess.Popen[bytes] | None = None
        self.balancer: subprocess.Popen[bytes] | None = None
        self.rounds: list[dict[str, Any]] = []
        self.instances: list[dict[str, Any]] = []  # one per service process
        self.extra_ok = 0  # sanity/probe requests outside wrk that the route's verification counts
        self.extra_sent = 0
        self.result: dict[str, Any] = {}
        self.route: Route = make_route(args.route, args.threads)  # what wrk sends (routes.py)
        self.route_setup: dict[str, Any] = {}
        self.db: Database
        self.postgres_data: Path | None = None
        self.kafka_data = self.tmp / "kafka"
        # Lifespans of their own, so `other` load can be told from ours: Kafka's and PostgreSQL's process trees.
        self.server_roots: dict[str, Path] = {"kafka": self.kafka_data / "kafka.pid"}

    @property
    def service(self) -> subprocess.Popen[bytes] | None:
        return self.services[0] if self.services else None

    @property
    def service_log(self) -> Path:
        return self.service_logs[0] if self.service_logs else self.tmp / "service-1.log"

    # ---- what routes use to prepare themselves (routes.Setup)

    def service_url(self) -> str:
        return f"http://127.0.0.1:{self.args.service_port}"

    def bare_url(self) -> str:
        return f"http://127.0.0.1:{self.args.bare_port}"

    def key_pool(self, *scopes: str) -> str:
        """--keys keys holding `scopes`, for wrk to take turns with: "@<file>", one key a line (0600).

        The service runs with its per-key rate limits at their defaults, as an operator would;
        load spread over many keys, as many clients would send it, stays under them.
        """
        count = self.args.keys
        if count <= 1:  # one key, rate limits off (and service code older than key scopes works)
            return self.issue_key(*scopes) if scopes else self.token
        path = self.tmp / f"keys-{'-'.join(s.split(':')[1] for s in scopes) or 'all'}.txt"
        issued = subprocess.run(
            [sys.executable, "-c", _ISSUE_KEYS, self.project_id, str(count), *scopes],
            env=self._env, capture_output=True, text=True, check=True, cwd=self.service_cwd,
        )  # fmt: skip
        keys = issued.stdout.split()
        if len(keys) != count:
            raise RuntimeError(f"issued {len(keys)} keys, not {count}: {issued.stderr[-500:]}")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write("\n".join(keys) + "\n")
        return f"@{path}"

    def issue_key(self, *scopes: str) -> str:
        issued = subprocess.run(
            [*self.service_cmd, "keys", "issue", self.project_id, *(f"--scope={s}" for s in scopes)],
            env=self._env, capture_output=True, text=True, check=True, cwd=self.service_cwd,
        )  # fmt: skip
        return str(json.loads(issued.stdout.strip().splitlines()[-1])["apiKey"])

    # ---- setup

    def ports(self) -> dict[str, int]:
        a = self.args
        ports = {"service": a.service_port, "bare": a.bare_port}
        if a.replicas > 1:
            ports |= {"lb2": a.lb_port, "lb1": a.lb_port + 1}
        return ports

    def replica_ports(self) -> list[int]:
        a = self.args
        return [a.service_port] + [a.lb_port + 1 + i for i in range(1, a.replicas)]

    def setup(self) -> None:
        a = self.args
        wanted = [*self.ports().values(), *self.replica_ports(), a.kafka_port, a.kafka_port + 1000]
        if a.database == "postgresql":
            wanted.append(a.pg_port)
        for port in sorted(set(wanted)):
            if not port_free(port):
                raise RuntimeError(f"port {port} is in use on 127.0.0.1; pick others (see --help)")
        tools = ["wrk", "kcat"] + (["psql"] if a.database == "postgresql" else [])
        tools += ["nginx"] if a.replicas > 1 else []
        for tool in tools:
            if shutil.which(tool) is None:
                raise RuntimeError(f"{tool} not found: apt-get install -y wrk kcat nginx postgresql")
        log(
            f"run {self.run_id} (route {a.route}, {a.database}, {a.replicas} replica(s)), temp dir {self.tmp}"
        )
        self.wait_quiet()
        self.prepare_source()
        self.start_kafka()
        database_url = self.start_database()

        gen = lambda *extra: subprocess.run(  # noqa: E731
            [*self.service_cmd, "keys", "generate", *extra],
            capture_output=True,
            text=True,
            check=True,
            cwd=self.service_cwd,
            env=self.service_env_base,
        ).stdout.strip()
        self._env = {
            **self.service_env_base,
            "DATABASE_URL": database_url,
            "SQLITE_SYNCHRONOUS": "FULL",
            "SECRETS_MASTER_KEYS": gen(),
            "API_KEY_HASH_KEY": gen("--hash-key"),
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "KAFKA_TOPIC": self.topic,
            "MAX_SECRETS_PER_PROJECT": "100000000",
            "SECRET_VERSIONS_KEPT": str(VERSIONS_KEPT),
            "RELAY_MODE": a.relay,
        }
        if a.keys <= 1:  # one key carries the whole load: its per-key rate limits (0 = none) would answer 429
            self._env.update(RATE_LIMIT_PER_SECOND="0", RATE_LIMIT_READS_PER_SECOND="0")
        self._env.pop("AUTH_CACHE_SECONDS", None)
        created = subprocess.run(
            [*self.service_cmd, "projects", "create", f"bench-{self.run_id}"],
            env=self._env,
            capture_output=True,
            text=True,
            check=True,
            cwd=self.service_cwd,
        )
        project = json.loads(created.stdout.strip().splitlines()[-1])
        self.project_id, self.token = project["projectId"], project["apiKey"]
        if a.database == "postgresql":
            from .postgres import Db as PostgresDb

            self.db = PostgresDb(a.pg_port, self.project_id)
        else:
            from .sqlite import Db as SqliteDb

            self.db = SqliteDb(self.db_path, self.project_id)
        self.database_description = self.db.describe()
        self.start_service()
        log(f"starting the bare app on 127.0.0.1:{a.bare_port}")
        blog = self.tmp / "bare.log"
        self.bare = self.procs.start(
            "bare app",
            [sys.executable, str(BENCH / "bare_app.py"), "--host", "127.0.0.1", "--port", str(a.bare_port)],
            os.environ.copy(),
            blog,
            cpus=a.cpus,
        )
        wait_until(lambda: self._sanity(a.bare_port, "SANITY_BARE") == 201, self.bare, blog, "bare app")
        status = self._sanity(a.service_port, f"SANITY_{self.run_id}")
        if status != 201:
            raise RuntimeError(f"service answered {status} to a valid create")
        if a.replicas > 1:
            self.start_balancer()
        self.route_setup = self.route.prepare(self)

    def wait_quiet(self) -> None:
        a = self.args
        deadline = time.monotonic() + a.wait_quiet
        quiet_since = None
        while True:
            busy0, total0, _ = machine_cpu()
            time.sleep(1)
            busy1, total1, _ = machine_cpu()
            self.background_cpu = round(
                (busy1 - busy0) / max(1.0, total1 - total0) * (os.cpu_count() or 1), 2
            )
            if self.background_cpu <= 0.3:
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since >= min(5, a.wait_quiet):
                    break
            else:
                quiet_since = None
            if time.monotonic() >= deadline:
                break
        if self.background_cpu > 0.3:
            log(f"warning: the machine is already busy ({self.background_cpu} cores) before the run starts")

    def start_kafka(self) -> None:
        a = self.args
        log(f"starting Kafka on 127.0.0.1:{a.kafka_port}")
        script = str(ROOT / "scripts" / "kafka-local")
        where = ["--port", str(a.kafka_port), "--data", str(self.kafka_data)]
        self.procs.scripted.append(("Kafka", [script, "stop", *where]))
        out = subprocess.run(
            [script, "start", *where], capture_output=True, text=True, timeout=300, check=False
        )
        if out.returncode != 0:
            raise RuntimeError(f"kafka-local start failed:\n{out.stderr[-3000:]}")
        self.bootstrap = out.stdout.strip().splitlines()[-1]

    def start_database(self) -> str:
        """The service's DATABASE_URL: a fresh SQLite file, or a private PostgreSQL server (postgres-local)."""
        a = self.args
        if a.database == "sqlite":
            return f"sqlite:///{self.db_path}"
        # Outside the private temp dir: the server runs as the postgres user, which must reach its data dir.
        self.postgres_data = Path(tempfile.gettempdir()) / f"secrets-bench-{self.run_id.lower()}-pg"
        script = str(ROOT / "scripts" / "postgres-local")
        where = ["--port", str(a.pg_port), "--data", str(self.postgres_data)]
        log(f"starting PostgreSQL on 127.0.0.1:{a.pg_port} (data {self.postgres_data})")
        purge = [] if a.keep_tmp else ["--purge"]
        self.procs.scripted.append(("PostgreSQL", [script, "stop", *where, *purge]))
        # Every request waits on this server, so it may use any CPU, as it could before the helpers were
        # kept off the measured ones: confined with wrk, Kafka and the relay to the others, it answered
        # more slowly than a server of its own would, and the service idled waiting for it.
        out = subprocess.run(
            [script, "start", *where],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
            preexec_fn=lambda: os.sched_setaffinity(0, a.machine_cpus),
        )
        if out.returncode != 0:
            raise RuntimeError(f"postgres-local start failed:\n{out.stderr[-3000:]}")
        self.server_roots["postgres"] = self.postgres_data / "postmaster.pid"
        return out.stdout.strip().splitlines()[-1]

    def start_balancer(self) -> None:
        a = self.args
        run_dir = self.tmp / "nginx"
        run_dir.mkdir()
        replicas = self.replica_ports()
        config = run_dir / "nginx.conf"
        config.write_text(
            nginx_config(
                NGINX_TEMPLATE.read_text(), run_dir, {a.lb_port: replicas, a.lb_port + 1: replicas[:1]}
            )
        )
        log(f"starting nginx on 127.0.0.1:{a.lb_port} ({len(replicas)} replicas) and :{a.lb_port + 1} (one)")
        blog = run_dir / "nginx.out"
        self.balancer = self.procs.start("nginx", nginx_command(config, run_dir), os.environ.copy(), blog)
        for port in (a.lb_port, a.lb_port + 1):
            wait_until(
                lambda port=port: http("GET", f"http://127.0.0.1:{port}/healthz", timeout=2)[0] == 200,
                self.balancer,
                blog,
                "nginx",
            )

    def prepare_source(self) -> None:
        """Which service code runs: the working tree (default), or a git ref exported to the temp dir."""
        a = self.args
        base = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "SQLITE_", "DATABASE_"))}
        # A ref's own dependencies that the venv no longer holds: PYTHONPATH=DIR (pip install --target DIR).
        ref_libs = base.pop("PYTHONPATH", None)
        if a.ref is None:
            self.service_cmd = [str(SERVICE_BIN)]
            self.service_cwd = ROOT
            self.source = {"ref": None, "service_sha256": tree_hash(ROOT / "service")}
        else:
            commit = subprocess.run(
                ["git", "rev-parse", "--verify", f"{a.ref}^{{commit}}"],
                cwd=ROOT, capture_output=True, text=True, check=True,
            ).stdout.strip()  # fmt: skip
            src = self.tmp / "src"
            src.mkdir()
            archive = subprocess.run(
                ["git", "archive", commit, "service"], cwd=ROOT, capture_output=True, check=True
            )
            subprocess.run(["tar", "-x", "-C", str(src)], input=archive.stdout, check=True)
            # python -c puts the cwd first on sys.path, ahead of the editable install of the working tree
            self.service_cmd = [
                sys.executable,
                "-c",
                "import sys; from service.cli import main; sys.exit(main())",
            ]
            self.service_cwd = src
            base["PYTHONPATH"] = os.pathsep.join([str(src), *([ref_libs] if ref_libs else [])])
            self.source = {"ref": a.ref, "commit": commit, "service_sha256": tree_hash(src / "service")}
            log(f"benchmarking service/ at {a.ref} ({commit[:10]})")
        self.service_env_base = base

    def _sanity(self, port: int, name: str) -> int:
        status, body = http(
            "POST",
            f"http://127.0.0.1:{port}/api/secrets",
            {"name": name, "value": "sanity"},
            {"X-Auth-Token": self.token},
        )
        if status == 201:
            # The contract's fields, and `version` (since scoped keys and versions; --ref may predate it).
            assert set(body) - {"version"} == {"id", "projectId", "name", "createdAt", "updatedAt"}, body
            if port == self.args.service_port and self.route.name == "create":
                self.extra_ok += 1
                self.extra_sent += 1
        return status

    def start_service(self) -> None:
        """Start every replica (one unless --replicas), each on its port, and wait until each answers."""
        for i, port in enumerate(self.replica_ports()):
            log(f"starting the service on 127.0.0.1:{port}" + (f" (replica {i + 1})" if i else ""))
            slog = self.tmp / f"service-{len(self.instances) + 1}.log"
            proc = self.procs.start(
                "service" if not i else f"replica {i + 1}",
                [*self.service_cmd, "serve", "--host", "127.0.0.1", "--port", str(port)],
                self._env,
                slog,
                self.service_cwd,
                cpus=self.args.cpus,
            )
            self.services.append(proc)
            self.service_logs.append(slog)
            wait_until(
                lambda port=port: http("GET", f"http://127.0.0.1:{port}/healthz", timeout=2)[0] == 200,
                proc,
                slog,
                "service",
            )
            self.instances.append({"pid": proc.pid, "port": port, "log": str(slog), "started": time.time()})

    def stop_service(self) -> None:
        assert self.services
        self.wait_outbox_drained("before stopping the service")
        for proc, inst in zip(self.services, self.instances[-len(self.services) :], strict=True):
            mem = proc_status(proc.pid)
            inst["vmhwm_kb"] = mem.get("VmHWM")
            inst["vmrss_kb"] = mem.get("VmRSS")
            inst["cpu_s"] = tree_cpu_seconds([proc.pid])
            # A separate relay (a child process): its own peak, beside the API process's.
            children = [proc_status(pid).get("VmHWM") or 0 for pid in descendants([proc.pid]) - {proc.pid}]
            inst["children_vmhwm_kb"] = max(children) if children else None
            rc = self.procs.stop(proc, 60)
            inst["exit_code"] = rc
            log(f"service on :{inst['port']} stopped (exit {rc}), peak RSS {inst['vmhwm_kb'] / 1024:.1f} MB")
        self.services, self.service_logs = [], []

    def wait_outbox_drained(self, why: str, timeout: float = 120) -> dict[str, Any]:
        t0 = time.monotonic()
        first = self.db.pending_outbox()
        pending = first
        while pending and time.monotonic() - t0 < timeout:
            time.sleep(0.1)
            pending = self.db.pending_outbox()
        if pending:
            log(f"outbox still has {pending} pending events after {timeout}s ({why})")
        return {"pending_at_end": first, "drain_s": round(time.monotonic() - t0, 2), "pending_after": pending}

    # ---- rounds

    def server_pids(self, kind: str) -> list[int]:
        """The processes that serve a round (their CPU is the round's server CPU)."""
        if kind == "bare":
            assert self.bare is not None
            return [self.bare.pid]
        if kind == "lb2":
            return [p.pid for p in self.services]
        return [self.services[0].pid]

    def helper_cpu(self, serving: list[int]) -> dict[str, float]:
        """CPU seconds so far of the run's own servers besides those serving the round: Kafka, PostgreSQL,
        nginx, and replicas left idle."""
        out = {}
        idle = [p.pid for p in self.services if p.pid not in serving]
        if idle:
            out["idle_replicas"] = sum(cpu_seconds(pid) for pid in idle)
        for name, pidfile in self.server_roots.items():
            pid = pid_from_file(pidfile)
            if pid is not None:
                out[name] = tree_cpu_seconds([pid])
        if self.balancer is not None:
            out["nginx"] = tree_cpu_seconds([self.balancer.pid])
        return out

    async def round(
        self, kind: str, phase: str, index: int, duration: float | None = None, probe: bool = False
    ) -> dict[str, Any]:
        a = self.args
        route = self.route
        ok = str(route.ok)
        duration = duration or a.duration
        tag = {"empty": "E", "probe": "P", "prefilled": "M", "warmup": "W", "profile": "F"}[phase]
        suffix = {"service": "", "bare": "_BARE", "lb1": "_LB1", "lb2": "_LB2"}[kind]
        prefix = f"BENCH_{self.run_id}_{tag}{index}{suffix}"
        port = self.ports()[kind]
        pids = self.server_pids(kind)
        to_service = kind in SERVICE_KINDS
        rows_before = self.db.total_rows() if to_service else None
        seq_before = self.db.last_seq() if to_service else 0
        helpers0 = self.helper_cpu(pids)
        # The whole tree: a separate relay is a child of the API process, and its CPU is the service's too.
        cpu0, t0 = tree_cpu_seconds(pids), time.monotonic()
        client0, (busy0, total0, stolen0) = children_cpu(), machine_cpu()
        probe_task = None
        if probe:
            probe_task = asyncio.create_task(
                event_probe(
                    self.procs,
                    bootstrap=self.bootstrap,
                    topic=self.topic,
                    port=a.service_port,
                    route=route,
                    run_id=self.run_id,
                    interval=a.probe_interval,
                    duration=duration,
                )
            )
        res = await wrk(
            self.procs,
            route,
            port,
            prefix,
            duration,
            not a.no_status_count,
            threads=a.threads,
            connections=a.connections,
            timeout=a.timeout,
        )
        wall = time.monotonic() - t0
        cpu = tree_cpu_seconds(pids) - cpu0
        client_cpu = children_cpu() - client0
        busy1, total1, stolen1 = machine_cpu()
        helpers = {k: v - helpers0.get(k, v) for k, v in self.helper_cpu(pids).items()}
        errors = sum(res["errors"].values())
        if f"non_{ok}" in res:
            count_ok = res["statuses"].get(ok, 0)
            non_ok = res[f"non_{ok}"]
        else:  # without response(): wrk counts statuses > 399 in errors.status
            non_ok = res["errors"]["status"]
            count_ok = res["requests"] - non_ok
        cores = (busy1 - busy0) / (total1 - total0) * (os.cpu_count() or 1) if total1 > total0 else None
        other = round(cores - (cpu + client_cpu) / wall, 2) if cores is not None and wall else None
        r: dict[str, Any] = {
            "kind": kind,
            "phase": phase,
            "index": index,
            "prefix": prefix,
            "duration_s": duration,
            "rps": res["rps"],
            "p50_ms": res["latency_ms"]["p50"],
            "p99_ms": res["latency_ms"]["p99"],
            "errors": errors,
            f"non_{ok}": non_ok,
            f"count_{ok}": count_ok,
            "process_cpu_s": round(cpu, 2),
            "process_cpu_util": round(cpu / wall, 3) if wall else None,
            "cpu_us_per_request": round(cpu / res["requests"] * 1e6, 1) if res["requests"] else None,
            # wrk (and kcat in the probe round) share the machine's cores with the server
            "client_cpu_util": round(client_cpu / wall, 3) if wall else None,
            "machine_cpu_busy": round((busy1 - busy0) / (total1 - total0), 3) if total1 > total0 else None,
            # cores used by everything else on the machine (Kafka, other sessions' processes, ...)
            "other_cpu_cores": other,
            # of those, the run's own servers (Kafka, PostgreSQL, nginx), and what is left: other sessions' load
            "helper_cpu_util": {k: round(v / wall, 3) for k, v in helpers.items()} if wall else None,
            "outside_cpu_cores": round(other - sum(helpers.values()) / wall, 2)
            if other is not None and wall
            else None,
            # of the outside load, the host's: CPU time given to other virtual machines
            "stolen_cpu_cores": round((stolen1 - stolen0) / (total1 - total0) * (os.cpu_count() or 1), 2)
            if total1 > total0
            else None,
            "wrk": res,
        }
        if probe_task is not None:  # before any blocking wait: the probe's consumer still reads the topic
            r["event_probe"] = await probe_task
            if route.name == "create":
                self.extra_sent += r["event_probe"]["probes"]
                self.extra_ok += r["event_probe"][f"probes_{ok}"]
        if to_service:
            backlog = self.wait_outbox_drained(f"after {prefix}")
            r["rows_before"] = rows_before
            r.update(route.round_check(self.db, prefix, seq_before, count_ok, res["requests_sent"]))
            r.update(outbox_backlog_at_end=backlog["pending_at_end"], outbox_drain_s=backlog["drain_s"])
        self.rounds.append(r)
        extra = f", {route.committed_key.split('_')[0]} {r[route.committed_key]}" if to_service else ""
        log(
            f"{kind:7s} {phase:9s} #{index}: {r['rps']:9.1f} req/s  p50 {r['p50_ms']:.2f} ms  "
            f"p99 {r['p99_ms']:.2f} ms  errors {errors}  non-{ok} {non_ok}  cpu server {r['process_cpu_util']} "
            f"wrk {r['client_cpu_util']} other {r['other_cpu_cores']} (outside {r['outside_cpu_cores']}){extra}"
        )
        if to_service and not r[route.check_key]:
            log(
                f"  {route.check_key} FAILED: {count_ok} {ok}s, {r[route.committed_key]} in the database, {res['requests_sent']} sent"
            )
        await asyncio.sleep(a.pause)
        return r

    async def alternate(self, phase: str, rounds: int) -> None:
        for i in range(1, rounds + 1):
            await self.round("service", phase, i)
            await self.round("bare", phase, i)
            if self.args.replicas > 1:
                await self.round("lb1", phase, i)
                await self.round("lb2", phase, i)

    async def warmup(self, tag_index: int) -> None:
        if self.args.warmup <= 0:
            return
        log(f"warming up ({self.args.warmup}s each)")
        await self.round("service", "warmup", tag_index, self.args.warmup)
        if tag_index == 1:
            await self.round("bare", "warmup", tag_index, self.args.warmup)
        if self.args.replicas > 1:
            await self.round("lb2", "warmup", tag_index, self.args.warmup)

    async def profile_round(self) -> dict[str, Any] | None:
        pyspy = BIN / "py-spy"
        if not pyspy.exists():
            log("py-spy not in the venv (pip install py-spy); skipping the profile")
            return None
        assert self.service is not None
        folder = self.tmp if self.args.no_results else RESULTS
        folder.mkdir(exist_ok=True)
        out = folder / f"profile-{self.stamp}{self.label}.txt"
        cmd = [str(pyspy), "record", "-p", str(self.service.pid), "-d", str(int(self.args.duration)),
               "-r", "250", "--threads", "--format", "raw", "-o", str(out)]  # fmt: skip
        log("profiling one service round with py-spy")
        spy = await asyncio.create_subprocess_exec(
            *cmd, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        self.procs.async_pids[spy.pid] = "py-spy"
        r = await self.round("service", "profile", 1)
        _, err = await asyncio.wait_for(spy.communicate(), 60)
        self.procs.async_pids.pop(spy.pid, None)
        if spy.returncode != 0 or not out.exists():
            log(f"py-spy failed (exit {spy.returncode}): {err.decode()[:1500]}")
            return None
        summary = summarize_profile(out)
        summary["file"] = str(out.relative_to(ROOT)) if out.is_relative_to(ROOT) else str(out)
        summary["round_rps"] = r["rps"]
        return summary

    # ---- verification

    def verify(self) -> dict[str, Any]:
        """The route's own checks (every success left what it must), then: every event is on the topic."""
        prefill_prefix = f"PREFILL_{self.run_id}"
        ids = self.db.service_secret_ids(prefill_prefix)
        service_rounds = [r for r in self.rounds if r["kind"] in SERVICE_KINDS]
        checks = self.route.verify(self.db, service_rounds, self.extra_ok, self.extra_sent, ids)
        checks["rows_prefilled"] = self.db.rows_with_prefix(prefill_prefix)
        outbox = self.db.outbox_events()
        log(f"reading the whole topic {self.topic} back")
        t0 = time.monotonic()
        kcat = subprocess.Popen(
            ["kcat", "-C", "-b", self.bootstrap, "-t", self.topic, "-o", "beginning", "-e", "-q",
             "-f", "%k\t%h\n"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        records = 0
        keys: set[str] = set()
        event_ids: set[str] = set()
        types: Counter[str] = Counter()
        subject_mismatch = 0
        assert kcat.stdout is not None
        for raw in kcat.stdout:
            key, _, headers = raw.decode().rstrip("\n").partition("\t")
            records += 1
            keys.add(key)
            hd = dict(h.partition("=")[::2] for h in headers.split(","))
            types[hd.get("ce_type", "?")] += 1
            event_ids.add(hd.get("ce_id", ""))
            if hd.get("ce_subject") != key:
                subject_mismatch += 1
        kcat.wait(600)
        outbox_ids = {event_id for event_id, _ in outbox}
        missing = [(e, t) for e, t in outbox if e not in event_ids]
        return {
            **checks,
            "topic_records": records,
            "topic_distinct_secrets": len(keys),
            # an event published twice (delivery is at least once) has one ce_id
            "topic_duplicates": records - len(event_ids),
            "topic_event_types": dict(types),
            "topic_subject_mismatches": subject_mismatch,
            "rows_without_event": len(ids - keys),
            "events_without_row": len(keys - ids),
            "events_cover_rows": not (ids - keys) and subject_mismatch == 0,
            "outbox_events": len(outbox),
            "outbox_event_types": dict(Counter(t for _, t in outbox)),
            "outbox_events_missing_on_topic": len(missing),
            "outbox_missing_by_type": dict(Counter(t for _, t in missing)),
            "topic_events_not_in_outbox": len(event_ids - outbox_ids),
            "every_event_on_topic": not missing and subject_mismatch == 0,
            "outbox_pending_after_stop": self.db.pending_outbox(),
            "topic_read_s": round(time.monotonic() - t0, 1),
            "kcat_exit": kcat.returncode,
        }

    # ---- main

    async def run(self) -> dict[str, Any]:
        a = self.args
        self.stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        self.label = run_label(a.route, a.database, a.replicas)
        started = time.time()
        self.setup()
        await self.warmup(1)
        log(f"{a.rounds} alternating rounds of {a.duration}s, {self.route.base_label}")
        await self.alternate("empty", a.rounds)
        log(f"event-latency round (probe every {a.probe_interval * 1000:.0f} ms)")
        await self.round("service", "probe", 1, probe=True)
        profile = await self.profile_round() if a.profile else None
        prefill_info = None
        if a.prefill > 0:
            self.stop_service()
            log(f"prefilling {a.prefill:,} secrets")
            prefill_info = self.db.prefill(a.prefill, f"PREFILL_{self.run_id}")
            log(f"prefill took {prefill_info['seconds']}s, database {prefill_info['db_bytes'] / 1e6:.0f} MB")
            self.start_service()
            await self.warmup(2)
            await self.alternate("prefilled", a.prefill_rounds)
        self.stop_service()
        assert self.bare is not None
        bare_mem = proc_status(self.bare.pid)
        self.procs.stop(self.bare)
        verification = self.verify()
        return self.summarize(started, prefill_info, verification, profile, bare_mem)

    def summarize(self, started: float, prefill_info, verification, profile, bare_mem) -> dict[str, Any]:
        a = self.args
        ok = str(self.route.ok)
        by = lambda kind, phase: [r for r in self.rounds if r["kind"] == kind and r["phase"] == phase]  # noqa: E731
        svc, bare = by("service", "empty"), by("bare", "empty")
        ratios = [s["rps"] / b["rps"] for s, b in zip(svc, bare, strict=False) if b["rps"]]
        for s, ratio in zip(svc, ratios, strict=False):
            s["ratio_to_bare"] = round(ratio, 4)
        psvc, pbare = by("service", "prefilled"), by("bare", "prefilled")
        pratios = [s["rps"] / b["rps"] for s, b in zip(psvc, pbare, strict=False) if b["rps"]]
        for s, ratio in zip(psvc, pratios, strict=False):
            s["ratio_to_bare"] = round(ratio, 4)
        for r in self.rounds:
            r["tail_p99_over_p50"] = round(r["p99_ms"] / r["p50_ms"], 3) if r["p50_ms"] else None
        probe = by("service", "probe")[0].get("event_probe") if by("service", "probe") else None
        all_service = [r for r in self.rounds if r["kind"] in SERVICE_KINDS]
        all_bare = [r for r in self.rounds if r["kind"] == "bare"]
        peak_rss_mb = max((i.get("vmhwm_kb") or 0) for i in self.instances) / 1024
        children_rss_kb = [i["children_vmhwm_kb"] for i in self.instances if i.get("children_vmhwm_kb")]
        empty_med = med([r["rps"] for r in svc])
        pre_med = med([r["rps"] for r in psvc])
        summary = {
            "service_rps_median": empty_med,
            "bare_rps_median": med([r["rps"] for r in bare]),
            "ratio_median": med(ratios),
            "ratio_of_medians": (empty_med / med([r["rps"] for r in bare])) if svc and bare else None,
            "service_p50_ms_median": med([r["p50_ms"] for r in svc]),
            "service_p99_ms_median": med([r["p99_ms"] for r in svc]),
            "service_p99_ms_max": max((r["p99_ms"] for r in svc), default=None),
            "service_tail_median": med([r["tail_p99_over_p50"] for r in svc]),
            "service_tail_max": max((r["tail_p99_over_p50"] for r in svc), default=None),
            "bare_p50_ms_median": med([r["p50_ms"] for r in bare]),
            "bare_p99_ms_median": med([r["p99_ms"] for r in bare]),
            "bare_tail_median": med([r["tail_p99_over_p50"] for r in bare]),
            "bare_tail_max": max((r["tail_p99_over_p50"] for r in bare), default=None),
            "service_cpu_us_per_request_median": med([r["cpu_us_per_request"] for r in svc]),
            "bare_cpu_us_per_request_median": med([r["cpu_us_per_request"] for r in bare]),
            "service_errors_total": sum(r["errors"] for r in all_service),
            f"service_non_{ok}_total": sum(r[f"non_{ok}"] for r in all_service),
            "bare_errors_total": sum(r["errors"] for r in all_bare),
            f"bare_non_{ok}_total": sum(r[f"non_{ok}"] for r in all_bare),
            "event_latency_ms": probe["latency_ms"] if probe else None,
            "event_probe_missing": probe["events_missing"] if probe else None,
            "prefilled_rows": prefill_info["project_rows_after"] if prefill_info else None,
            "prefilled_service_rps_median": pre_med,
            "prefilled_vs_empty": (pre_med / empty_med) if pre_med and empty_med else None,
            "prefilled_ratio_median": med(pratios),
            "prefilled_p99_ms_max": max((r["p99_ms"] for r in psvc), default=None),
            "other_cpu_cores_median": med([r["other_cpu_cores"] for r in svc + bare]),
            "outside_cpu_cores_median": med([r["outside_cpu_cores"] for r in svc + bare]),
            "stolen_cpu_cores_median": med([r["stolen_cpu_cores"] for r in svc + bare]),
            "peak_rss_mb": round(peak_rss_mb, 1),
            "relay_peak_rss_mb": round(max(children_rss_kb) / 1024, 1) if children_rss_kb else None,
            "bare_peak_rss_mb": round(bare_mem.get("VmHWM", 0) / 1024, 1),
        }
        summary["prefilled_vs_empty_normalized"] = (
            summary["prefilled_ratio_median"] / summary["ratio_median"]
            if summary["prefilled_ratio_median"] and summary["ratio_median"]
            else None
        )
        if a.replicas > 1:
            summary.update(self.summarize_replicas(by))
        targets = compute_targets(
            self.route.name, a.database, summary, verification, a.connections, self.route.ok
        )
        settings = {
            "quick": a.quick,
            "route": a.route,
            "database": a.database,
            "replicas": a.replicas,
            "threads": a.threads,
            "connections": a.connections,
            "duration_s": a.duration,
            "rounds": a.rounds,
            "warmup_s": a.warmup,
            "prefill": a.prefill,
            "prefill_rounds": a.prefill_rounds,
            "wrk_timeout_s": a.timeout,
            "status_counting": "wrk response() callback"
            if not a.no_status_count
            else "summary.errors.status",
            "probe_interval_s": a.probe_interval,
            "auth_cache_seconds": "default",
            "max_secrets_per_project": 100000000,
            "secret_versions_kept": VERSIONS_KEPT,
            "rate_limits": (
                f"on, at their defaults; the load spread over {self.args.keys} API keys"
                if self.args.keys > 1
                else "off (RATE_LIMIT_PER_SECOND=0, RATE_LIMIT_READS_PER_SECOND=0); one API key"
            ),
            "kafka": f"{self.bootstrap} topic {self.topic}",
            "database_server": self.database_description,
        }
        if a.database == "sqlite":
            settings["sqlite_synchronous"] = "FULL"
        settings["relay"] = a.relay
        settings["pinned_cpus"] = sorted(a.cpus) if a.cpus else None
        # What the harness and its helpers (wrk, Kafka, nginx) ran on (see cli.keep_off).
        settings["helper_cpus"] = sorted(os.sched_getaffinity(0))
        if a.database == "postgresql":
            settings["database_server_cpus"] = sorted(a.machine_cpus)
        # The service's own CPU settings, which it takes from the environment bench/run was started in.
        settings["service_cpu_settings"] = {
            k: os.environ[k] for k in ("SERVE_CPUS", "RELAY_CPUS") if k in os.environ
        }
        if a.replicas > 1:
            settings["balancer"] = f"nginx from {NGINX_TEMPLATE.relative_to(ROOT)} (access log off)"
        return {
            "timestamp": self.stamp,
            "run_id": self.run_id,
            "route": a.route,
            "route_request": self.route.request,
            "database": a.database,
            "command": " ".join(["bench/run", *sys.argv[1:]]),
            "elapsed_s": round(time.time() - started, 1),
            "settings": settings,
            "machine": {**machine(), "background_cpu_cores_before_run": self.background_cpu},
            "service_source": self.source,
            "summary": summary,
            "targets": targets,
            "rounds": self.rounds,
            "route_setup": self.route_setup,
            "service_instances": self.instances,
            "prefill": prefill_info,
            "verification": verification,
            "profile": profile,
        }

    def summarize_replicas(self, by) -> dict[str, Any]:
        """Two replicas behind the balancer against one: behind the same balancer, and served directly."""
        out: dict[str, Any] = {}
        for phase, key in (("empty", ""), ("prefilled", "prefilled_")):
            direct, one, two = by("service", phase), by("lb1", phase), by("lb2", phase)
            for r2, r1, rd in zip(two, one, direct, strict=False):
                r2["multiple_of_lb1"] = round(r2["rps"] / r1["rps"], 3) if r1["rps"] else None
                r2["multiple_of_direct"] = round(r2["rps"] / rd["rps"], 3) if rd["rps"] else None
            out |= {
                f"{key}lb1_rps_median": med([r["rps"] for r in one]),
                f"{key}lb2_rps_median": med([r["rps"] for r in two]),
                f"{key}lb2_multiple_of_lb1_median": med([r.get("multiple_of_lb1") for r in two]),
                f"{key}lb2_multiple_of_direct_median": med([r.get("multiple_of_direct") for r in two]),
                f"{key}lb2_p99_ms_max": max((r["p99_ms"] for r in two), default=None),
            }
        return out

    def cleanup(self) -> None:
        self.procs.stop_all()
        if self.args.keep_tmp:
            log(f"kept {self.tmp}" + (f" and {self.postgres_data}" if self.postgres_data else ""))
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)
