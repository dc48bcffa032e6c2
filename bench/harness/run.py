"""Bench: one run, from starting Kafka, the service and the bare app to the result dict."""

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

from . import BENCH, RESULTS, ROOT, log
from .load import event_probe, http, wrk
from .processes import Procs, children_cpu, cpu_seconds, machine_cpu, port_free, proc_status, wait_until
from .report import compute_targets, machine, summarize_profile
from .routes import CREATE, Route
from .sqlite import Db, prefill

BIN = Path(sys.executable).parent
SERVICE_BIN = BIN / "secrets-service"


def tree_hash(directory: Path) -> str:
    """sha256 over the .py files of a directory: which service code a result belongs to."""
    h = hashlib.sha256()
    for path in sorted(directory.rglob("*.py")):
        h.update(str(path.relative_to(directory)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def med(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.procs = Procs()
        self.run_id = pysecrets.token_hex(3).upper()
        self.tmp = Path(tempfile.mkdtemp(prefix="secrets-bench-"))
        self.db_path = self.tmp / "secrets.db"
        self.topic = f"bench-{self.run_id.lower()}"
        self.service: subprocess.Popen[bytes] | None = None
        self.bare: subprocess.Popen[bytes] | None = None
        self.rounds: list[dict[str, Any]] = []
        self.instances: list[dict[str, Any]] = []  # one per service process
        self.extra_201 = 0  # sanity/probe creates outside wrk
        self.extra_sent = 0
        self.result: dict[str, Any] = {}
        self.route: Route = CREATE  # what wrk sends (routes.py)

    # ---- setup

    def env(self) -> dict[str, str]:
        return self._env

    def setup(self) -> None:
        a = self.args
        for port in (a.service_port, a.bare_port, a.kafka_port, a.kafka_port + 1000):
            if not port_free(port):
                raise RuntimeError(f"port {port} is in use on 127.0.0.1; pick others (see --help)")
        for tool in ("wrk", "kcat"):
            if shutil.which(tool) is None:
                raise RuntimeError(f"{tool} not found: apt-get install -y wrk kcat")
        log(f"run {self.run_id}, temp dir {self.tmp}")
        deadline = time.monotonic() + a.wait_quiet
        quiet_since = None
        while True:
            busy0, total0 = machine_cpu()
            time.sleep(1)
            busy1, total1 = machine_cpu()
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
        self.prepare_source()
        log(f"starting Kafka on 127.0.0.1:{a.kafka_port}")
        self.procs.kafka = (str(a.kafka_port), str(self.tmp / "kafka"))
        out = subprocess.run(
            [
                str(ROOT / "scripts" / "kafka-local"),
                "start",
                "--port",
                str(a.kafka_port),
                "--data",
                str(self.tmp / "kafka"),
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if out.returncode != 0:
            raise RuntimeError(f"kafka-local start failed:\n{out.stderr[-3000:]}")
        self.bootstrap = out.stdout.strip().splitlines()[-1]

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
            "DATABASE_URL": f"sqlite:///{self.db_path}",
            "SQLITE_SYNCHRONOUS": "FULL",
            "SECRETS_MASTER_KEYS": gen(),
            "API_KEY_HASH_KEY": gen("--hash-key"),
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "KAFKA_TOPIC": self.topic,
            "MAX_SECRETS_PER_PROJECT": "100000000",
        }
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
        self.db = Db(self.db_path, self.project_id)
        self.start_service()
        log(f"starting the bare app on 127.0.0.1:{a.bare_port}")
        blog = self.tmp / "bare.log"
        self.bare = self.procs.start(
            "bare app",
            [sys.executable, str(BENCH / "bare_app.py"), "--host", "127.0.0.1", "--port", str(a.bare_port)],
            os.environ.copy(),
            blog,
        )
        wait_until(lambda: self._sanity(a.bare_port, "SANITY_BARE") == 201, self.bare, blog, "bare app")
        status = self._sanity(a.service_port, f"SANITY_{self.run_id}")
        if status != 201:
            raise RuntimeError(f"service answered {status} to a valid create")

    def prepare_source(self) -> None:
        """Which service code runs: the working tree (default), or a git ref exported to the temp dir."""
        a = self.args
        base = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "SQLITE_", "DATABASE_"))}
        base.pop("PYTHONPATH", None)
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
            base["PYTHONPATH"] = str(src)
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
            assert set(body) == {"id", "projectId", "name", "createdAt", "updatedAt", "version"}, body
            if port == self.args.service_port:
                self.extra_201 += 1
                self.extra_sent += 1
        return status

    def start_service(self) -> None:
        a = self.args
        log(f"starting the service on 127.0.0.1:{a.service_port}")
        slog = self.tmp / f"service-{len(self.instances) + 1}.log"
        self.service = self.procs.start(
            "service",
            [*self.service_cmd, "serve", "--host", "127.0.0.1", "--port", str(a.service_port)],
            self._env,
            slog,
            self.service_cwd,
        )
        self.service_log = slog
        wait_until(
            lambda: http("GET", f"http://127.0.0.1:{a.service_port}/healthz", timeout=2)[0] == 200,
            self.service,
            slog,
            "service",
        )
        self.instances.append({"pid": self.service.pid, "log": str(slog), "started": time.time()})

    def stop_service(self) -> None:
        assert self.service is not None
        self.wait_outbox_drained("before stopping the service")
        mem = proc_status(self.service.pid)
        inst = self.instances[-1]
        inst["vmhwm_kb"] = mem.get("VmHWM")
        inst["vmrss_kb"] = mem.get("VmRSS")
        inst["cpu_s"] = cpu_seconds(self.service.pid)
        rc = self.procs.stop(self.service, 60)
        inst["exit_code"] = rc
        log(f"service stopped (exit {rc}), peak RSS {inst['vmhwm_kb'] / 1024:.1f} MB")
        self.service = None

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

    async def round(
        self, kind: str, phase: str, index: int, duration: float | None = None, probe: bool = False
    ) -> dict[str, Any]:
        a = self.args
        duration = duration or a.duration
        tag = {"empty": "E", "probe": "P", "prefilled": "M", "warmup": "W", "profile": "F"}[phase]
        prefix = f"BENCH_{self.run_id}_{tag}{index}" + ("" if kind == "service" else "_BARE")
        port = a.service_port if kind == "service" else a.bare_port
        pid = (self.service if kind == "service" else self.bare).pid  # type: ignore[union-attr]
        rows_before = self.db.total_rows() if kind == "service" else None
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        client0, (busy0, total0) = children_cpu(), machine_cpu()
        probe_task = None
        if probe:
            probe_task = asyncio.create_task(
                event_probe(
                    self.procs,
                    bootstrap=self.bootstrap,
                    topic=self.topic,
                    port=a.service_port,
                    token=self.token,
                    run_id=self.run_id,
                    interval=a.probe_interval,
                    duration=duration,
                )
            )
        res = await wrk(
            self.procs,
            self.route,
            port,
            self.token,
            prefix,
            duration,
            not a.no_status_count,
            threads=a.threads,
            connections=a.connections,
            timeout=a.timeout,
        )
        wall = time.monotonic() - t0
        cpu = cpu_seconds(pid) - cpu0
        client_cpu = children_cpu() - client0
        busy1, total1 = machine_cpu()
        errors = sum(res["errors"].values())
        if "non_201" in res:
            ok_201 = res["statuses"].get("201", 0)
            non_201 = res["non_201"]
        else:  # without response(): wrk counts statuses > 399 in errors.status
            non_201 = res["errors"]["status"]
            ok_201 = res["requests"] - non_201
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
            "non_201": non_201,
            "count_201": ok_201,
            "process_cpu_s": round(cpu, 2),
            "process_cpu_util": round(cpu / wall, 3) if wall else None,
            "cpu_us_per_request": round(cpu / res["requests"] * 1e6, 1) if res["requests"] else None,
            # wrk (and kcat in the probe round) share the machine's cores with the server
            "client_cpu_util": round(client_cpu / wall, 3) if wall else None,
            "machine_cpu_busy": round((busy1 - busy0) / (total1 - total0), 3) if total1 > total0 else None,
            # cores used by everything else on the machine (Kafka, other sessions' processes, ...)
            "other_cpu_cores": round(
                (busy1 - busy0) / (total1 - total0) * (os.cpu_count() or 1) - (cpu + client_cpu) / wall, 2
            )
            if total1 > total0 and wall
            else None,
            "wrk": res,
        }
        if probe_task is not None:  # before any blocking wait: the probe's consumer still reads the topic
            r["event_probe"] = await probe_task
            self.extra_sent += r["event_probe"]["probes"]
            self.extra_201 += r["event_probe"]["probes_201"]
        if kind == "service":
            backlog = self.wait_outbox_drained(f"after {prefix}")
            rows = self.db.rows_with_prefix(prefix)
            r.update(
                rows_before=rows_before,
                rows_committed=rows,
                # every 201 must be a row; rows beyond the 201s are requests wrk cut off at the end
                all_201_in_db=ok_201 <= rows <= res["requests_sent"],
                outbox_backlog_at_end=backlog["pending_at_end"],
                outbox_drain_s=backlog["drain_s"],
            )
        self.rounds.append(r)
        extra = f", rows {r['rows_committed']}" if kind == "service" else ""
        log(
            f"{kind:7s} {phase:9s} #{index}: {r['rps']:9.1f} req/s  p50 {r['p50_ms']:.2f} ms  "
            f"p99 {r['p99_ms']:.2f} ms  errors {errors}  non-201 {non_201}  cpu server {r['process_cpu_util']} "
            f"wrk {r['client_cpu_util']} other {r['other_cpu_cores']}{extra}"
        )
        await asyncio.sleep(a.pause)
        return r

    async def alternate(self, phase: str, rounds: int) -> None:
        for i in range(1, rounds + 1):
            await self.round("service", phase, i)
            await self.round("bare", phase, i)

    async def warmup(self, tag_index: int) -> None:
        if self.args.warmup <= 0:
            return
        log(f"warming up ({self.args.warmup}s each)")
        await self.round("service", "warmup", tag_index, self.args.warmup)
        if tag_index == 1:
            await self.round("bare", "warmup", tag_index, self.args.warmup)

    async def profile_round(self) -> dict[str, Any] | None:
        pyspy = BIN / "py-spy"
        if not pyspy.exists():
            log("py-spy not in the venv (pip install py-spy); skipping the profile")
            return None
        assert self.service is not None
        stamp = self.stamp
        folder = self.tmp if self.args.no_results else RESULTS
        folder.mkdir(exist_ok=True)
        out = folder / f"profile-{stamp}.txt"
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
        """Every 201 is a row; every row the service made has an event on the topic."""
        con = self.db.connect()
        try:
            prefill_lo, prefill_hi = f"PREFILL_{self.run_id}_", f"PREFILL_{self.run_id}`"
            ids = {
                row[0]
                for row in con.execute(
                    "SELECT id FROM secrets WHERE project_id = ? AND NOT (name >= ? AND name < ?)",
                    (self.project_id, prefill_lo, prefill_hi),
                )
            }
            prefilled = con.execute(
                "SELECT COUNT(*) FROM secrets WHERE project_id = ? AND name >= ? AND name < ?",
                (self.project_id, prefill_lo, prefill_hi),
            ).fetchone()[0]
        finally:
            con.close()
        service_rounds = [r for r in self.rounds if r["kind"] == "service"]
        total_201 = sum(r["count_201"] for r in service_rounds) + self.extra_201
        total_sent = sum(r["wrk"]["requests_sent"] for r in service_rounds) + self.extra_sent
        per_round_ok = all(r["all_201_in_db"] for r in service_rounds)
        log(f"reading the whole topic {self.topic} back")
        t0 = time.monotonic()
        kc = subprocess.run(
            [
                "kcat",
                "-C",
                "-b",
                self.bootstrap,
                "-t",
                self.topic,
                "-o",
                "beginning",
                "-e",
                "-q",
                "-f",
                "%k\t%h\n",
            ],
            capture_output=True,
            timeout=600,
            check=False,
        )
        records = 0
        keys: set[str] = set()
        types: Counter[str] = Counter()
        subject_mismatch = 0
        for line in kc.stdout.decode().splitlines():
            key, _, headers = line.partition("\t")
            records += 1
            keys.add(key)
            hd = dict(h.partition("=")[::2] for h in headers.split(","))
            types[hd.get("ce_type", "?")] += 1
            if hd.get("ce_subject") != key:
                subject_mismatch += 1
        return {
            "rows_created_by_service": len(ids),
            "rows_prefilled": prefilled,
            "answers_201": total_201,
            "requests_sent": total_sent,
            "every_201_in_db": per_round_ok and total_201 <= len(ids) <= total_sent,
            "rows_beyond_201s": len(ids) - total_201,
            "topic_records": records,
            "topic_distinct_secrets": len(keys),
            "topic_duplicates": records - len(keys),
            "topic_event_types": dict(types),
            "topic_subject_mismatches": subject_mismatch,
            "rows_without_event": len(ids - keys),
            "events_without_row": len(keys - ids),
            "events_cover_rows": not (ids - keys) and subject_mismatch == 0,
            "outbox_pending_after_stop": self.db.pending_outbox(),
            "topic_read_s": round(time.monotonic() - t0, 1),
            "kcat_exit": kc.returncode,
        }

    # ---- main

    async def run(self) -> dict[str, Any]:
        a = self.args
        self.stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        started = time.time()
        self.setup()
        await self.warmup(1)
        log(f"{a.rounds} alternating rounds of {a.duration}s, empty database")
        await self.alternate("empty", a.rounds)
        log(f"event-latency round (probe every {a.probe_interval * 1000:.0f} ms)")
        await self.round("service", "probe", 1, probe=True)
        profile = await self.profile_round() if a.profile else None
        prefill_info = None
        if a.prefill > 0:
            self.stop_service()
            log(f"prefilling {a.prefill:,} secrets")
            prefill_info = prefill(self.db, a.prefill, f"PREFILL_{self.run_id}")
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
        by = lambda kind, phase: [r for r in self.rounds if r["kind"] == kind and r["phase"] == phase]  # noqa: E731
        svc, bare = by("service", "empty"), by("bare", "empty")
        ratios = [s["rps"] / b["rps"] for s, b in zip(svc, bare, strict=False) if b["rps"]]
        for s, ratio in zip(svc, ratios, strict=False):
            s["ratio_to_bare"] = round(ratio, 4)
        psvc, pbare = by("service", "prefilled"), by("bare", "prefilled")
        pratios = [s["rps"] / b["rps"] for s, b in zip(psvc, pbare, strict=False) if b["rps"]]
        for s, ratio in zip(psvc, pratios, strict=False):
            s["ratio_to_bare"] = round(ratio, 4)
        probe = by("service", "probe")[0].get("event_probe") if by("service", "probe") else None
        all_service = [r for r in self.rounds if r["kind"] == "service"]
        all_bare = [r for r in self.rounds if r["kind"] == "bare"]
        peak_rss_mb = max((i.get("vmhwm_kb") or 0) for i in self.instances) / 1024
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
            "bare_p50_ms_median": med([r["p50_ms"] for r in bare]),
            "bare_p99_ms_median": med([r["p99_ms"] for r in bare]),
            "service_cpu_us_per_request_median": med([r["cpu_us_per_request"] for r in svc]),
            "bare_cpu_us_per_request_median": med([r["cpu_us_per_request"] for r in bare]),
            "service_errors_total": sum(r["errors"] for r in all_service),
            "service_non_201_total": sum(r["non_201"] for r in all_service),
            "bare_errors_total": sum(r["errors"] for r in all_bare),
            "bare_non_201_total": sum(r["non_201"] for r in all_bare),
            "event_latency_ms": probe["latency_ms"] if probe else None,
            "event_probe_missing": probe["events_missing"] if probe else None,
            "prefilled_rows": prefill_info["project_rows_after"] if prefill_info else None,
            "prefilled_service_rps_median": pre_med,
            "prefilled_vs_empty": (pre_med / empty_med) if pre_med and empty_med else None,
            "prefilled_ratio_median": med(pratios),
            "prefilled_p99_ms_max": max((r["p99_ms"] for r in psvc), default=None),
            "other_cpu_cores_median": med([r["other_cpu_cores"] for r in svc + bare]),
            "peak_rss_mb": round(peak_rss_mb, 1),
            "bare_peak_rss_mb": round(bare_mem.get("VmHWM", 0) / 1024, 1),
        }
        summary["prefilled_vs_empty_normalized"] = (
            summary["prefilled_ratio_median"] / summary["ratio_median"]
            if summary["prefilled_ratio_median"] and summary["ratio_median"]
            else None
        )
        targets = compute_targets(summary, verification, a.connections)
        return {
            "timestamp": self.stamp,
            "run_id": self.run_id,
            "command": " ".join(["bench/run", *sys.argv[1:]]),
            "elapsed_s": round(time.time() - started, 1),
            "settings": {
                "quick": a.quick,
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
                "sqlite_synchronous": "FULL",
                "auth_cache_seconds": "default",
                "max_secrets_per_project": 100000000,
                "kafka": f"{self.bootstrap} topic {self.topic}",
            },
            "machine": {**machine(), "background_cpu_cores_before_run": self.background_cpu},
            "service_source": self.source,
            "summary": summary,
            "targets": targets,
            "rounds": self.rounds,
            "service_instances": self.instances,
            "prefill": prefill_info,
            "verification": verification,
            "profile": profile,
        }

    def cleanup(self) -> None:
        self.procs.stop_all()
        if self.args.keep_tmp:
            log(f"kept {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)
