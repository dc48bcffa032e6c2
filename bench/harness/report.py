"""What a run reports: the targets, the markdown table, the machine description, the profile summary."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import sqlite3
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

from . import ROOT

# Throughput: the median of per-round service/bare ratios, per route and database, and where it is asked.
RATIO_TARGETS: dict[tuple[str, str], list[tuple[float, str]]] = {
    ("create", "sqlite"): [(0.50, "issue 15"), (0.40, "issue 6")],
    ("create", "postgresql"): [(0.35, "issue 15, one replica")],
    ("read", "sqlite"): [(0.45, "issue 15"), (0.40, "issue 11")],
    ("read", "postgresql"): [(0.45, "issue 15"), (0.40, "issue 11")],
    ("update", "sqlite"): [(0.40, "issue 15")],
}
# Tail shape: p99/p50 of the worst scored service round, beside the bare ceiling's own.
TAIL_TARGETS: dict[tuple[str, str], tuple[float, str]] = {
    ("create", "sqlite"): (2.5, "issue 15"),
    ("read", "sqlite"): (2.5, "issue 11"),
    ("read", "postgresql"): (2.5, "issue 11"),
}
TARGETS = {
    "event_p99_ms_max": 250.0,
    "prefilled_within": 0.10,
    "rss_mb_max": 200.0,
}


def _rss(s: dict[str, Any]) -> str:
    """The API process's peak RSS, and a separate relay process's beside it."""
    relay = s.get("relay_peak_rss_mb")
    return f"{s['peak_rss_mb']:.1f} MB" + (f", its relay process {relay:.1f} MB" if relay else "")


def compute_targets(
    route: str,
    database: str,
    summary: dict[str, Any],
    verification: dict[str, Any],
    connections: int,
    ok: int,
) -> list[dict[str, Any]]:
    """The issues' targets for this route and database, measured. "pass" None: reported, no target.

    The 1M comparison uses service/bare ratios (robust to machine drift).
    """
    s, v = summary, verification
    norm = s.get("prefilled_vs_empty_normalized")
    ev_p99 = s["event_latency_ms"]["p99"] if s["event_latency_ms"] else None
    f = lambda value, spec: "n/a" if value is None else format(value, spec)  # noqa: E731
    ratio = s["ratio_median"]
    targets: list[tuple[str, str, bool | None]] = []
    for minimum, source in RATIO_TARGETS.get((route, database), []):
        targets.append(
            (f"Throughput >= {minimum:.0%} of bare (median of per-round ratios; {source})", f(ratio, ".1%"),
             None if ratio is None else ratio >= minimum)
        )  # fmt: skip
    if (route, database) not in RATIO_TARGETS:
        targets.append(
            (
                "Throughput vs bare (median of per-round ratios; no target on this database)",
                f(ratio, ".1%"),
                None,
            )
        )
    tail = s["service_tail_max"]
    shape = (
        f"{f(tail, '.2f')} (median {f(s['service_tail_median'], '.2f')}; bare {f(s['bare_tail_median'], '.2f')}, "
        f"worst {f(s['bare_tail_max'], '.2f')}); p99 {f(s['service_p99_ms_max'], '.1f')} ms worst, "
        f"p50 {f(s['service_p50_ms_median'], '.1f')} ms median"
    )
    if (route, database) in TAIL_TARGETS:
        ceiling, source = TAIL_TARGETS[(route, database)]
        targets.append(
            (f"Tail p99/p50 <= {ceiling} at {connections} connections (worst scored round; {source})", shape,
             None if tail is None else tail <= ceiling)
        )  # fmt: skip
    else:
        targets.append(
            (f"Tail p99/p50 at {connections} connections (worst scored round; no target)", shape, None)
        )
    targets += [
        (f"0 errors and 0 non-{ok} (all service rounds)", f"{s['service_errors_total']} errors, {s[f'service_non_{ok}_total']} non-{ok}",
         s["service_errors_total"] == 0 and s[f"service_non_{ok}_total"] == 0),
        ("Event latency p99 < 250 ms under load", "n/a" if ev_p99 is None else f"{ev_p99:.0f} ms (missing {s['event_probe_missing']})",
         ev_p99 is not None and ev_p99 < TARGETS["event_p99_ms_max"] and not s["event_probe_missing"]),
        (f"With {s['prefilled_rows'] or 0:,} stored: throughput within 10% of the smaller database (service/bare vs its)",
         "n/a" if norm is None else f"{norm:.1%} of it (raw req/s: {s['prefilled_vs_empty']:.1%})",
         None if norm is None else norm >= 1 - TARGETS["prefilled_within"]),
        ("Peak RSS of each service process < 200 MB", _rss(s), max(s["peak_rss_mb"], s.get("relay_peak_rss_mb") or 0) < TARGETS["rss_mb_max"]),
    ]  # fmt: skip
    if route == "create":
        targets.append(
            (
                "Every 201 is a row in the database",
                f"{v['answers_201']:,} 201s, {v['rows_created_by_service']:,} rows",
                v["every_201_in_db"],
            )
        )
        targets.append(
            (
                "Topic has an event for every row",
                f"{v['rows_without_event']} rows without event",
                v["events_cover_rows"],
            )
        )
    elif route == "read":
        targets.append(
            ("Every 200 carries its secret.accessed event (each round's, by request id; none twice)",
             f"{v['answers_200']:,} 200s, {v['accessed_events']:,} events, {v['duplicate_request_ids']} repeated",
             v["every_200_audited"])
        )  # fmt: skip
    elif route == "update":
        targets.append(
            ("Every 200 is a new version with its secret.updated event (per round; versions, events and kept "
             "versions add up per secret)",
             f"{v['answers_200']:,} 200s, {v['updated_events']:,} events, {v['versions_added']:,} versions added, "
             f"{v['secrets_inconsistent']} secrets inconsistent",
             v["every_200_versioned"])
        )  # fmt: skip
    missing_types = ", ".join(f"{k} {n}" for k, n in v["outbox_missing_by_type"].items()) or "none"
    targets.append(
        ("Topic holds every event of the outbox (by ce_id)",
         f"{v['outbox_events_missing_on_topic']} of {v['outbox_events']:,} missing ({missing_types})",
         v["every_event_on_topic"])
    )  # fmt: skip
    if s.get("lb2_rps_median") is not None:
        targets.append(
            ("Two replicas behind nginx: req/s as a multiple of one (no target)",
             f"{f(s['lb2_multiple_of_lb1_median'], '.2f')}x one replica behind the same nginx, "
             f"{f(s['lb2_multiple_of_direct_median'], '.2f')}x one replica served directly",
             None)
        )  # fmt: skip
    return [{"target": t, "measured": m, "pass": None if p is None else bool(p)} for t, m, p in targets]


# --------------------------------------------------------------------------- profile summary

# Self time: each sample goes to the category of its leaf-most frame that matches one
# (frames look like "function (path/file.py:line)"). Native code (uvloop, httptools,
# sqlite3, asyncpg's protocol, OpenSSL) has no frame of its own: it is charged to the
# Python frame that called it. The categories cover every route's path (create, read,
# update) on either database.
_CATEGORIES = [
    (
        "relay / Kafka producer",
        re.compile(r"\(aiokafka/|\(service/events/(relay|publisher|kafka)\.py|\(kafka/"),
    ),
    ("events built for the outbox (service/events/model.py, sql.py)", re.compile(r"\(service/events/")),
    (
        "crypto (AES-GCM seal and unseal, API-key hash)",
        re.compile(r"\(cryptography/|\(service/crypto\.py|\(hmac\.py|\(hashlib"),
    ),
    ("auth", re.compile(r"\(service/accounts/")),
    (
        "JSON parse + validation",
        re.compile(r"\(service/http/validation\.py|\(json/decoder\.py|^loads \(json/"),
    ),
    (
        "SQLite driver (service/db/sqlite.py, sqlite3: statements, commits, thread hops)",
        re.compile(r"\(service/db/sqlite\.py|\(sqlite3/"),
    ),
    (
        "PostgreSQL driver (service/db/postgres.py, asyncpg)",
        re.compile(r"\(service/db/postgres\.py|\(asyncpg/"),
    ),
    ("service store / vault / write plans", re.compile(r"\(service/(db|secrets)/")),
    (
        "response rendering (JSONResponse)",
        re.compile(
            r"\(starlette/responses\.py|\(service/http/responses\.py|\(json/encoder\.py|^dumps \(json/"
        ),
    ),
    (
        "Starlette routing / middleware / request",
        re.compile(r"\(starlette/|\(service/http/(middleware|routes)\.py|\(service/app\.py"),
    ),
    ("uvicorn / httptools protocol", re.compile(r"\(uvicorn/|\(httptools/")),
    (
        "asyncio / uvloop machinery",
        re.compile(r"\(asyncio/|\(uvloop/|\(concurrent/|\(threading\.py|\(queue\.py|\(selectors\.py"),
    ),
]

# Inclusive time per step: share of a thread's samples with a frame matching `rx` anywhere on the
# stack and none matching `unless`. On SQLite the write plans (seal, unseal, the events, the
# statements) run in the committer's thread; on PostgreSQL in the main thread.
_INCLUSIVE: list[tuple[str, str, str | None]] = [
    ("HTTP request handled in the app (Starlette.__call__)", r"^Starlette\.__call__ ", None),
    ("  create_secret route", r"^create_secret \(service/http/routes\.py", None),
    ("  read_value_by_name route", r"^read_value_by_name \(service/http/routes\.py", None),
    ("  update_secret route", r"^update_secret \(service/http/routes\.py", None),
    ("    authenticate", r"^Authenticator\.authenticate ", None),
    (
        "    read + parse + validate body and headers",
        r"^(Request\.body|parse_json_object|parse_new_secret|parse_value|parse_if_match|check_json_content_type) ",
        None,
    ),
    ("    the vault makes the job (Vault.create, read_value, _new_version)", r"^Vault\.", None),
    (
        "      before the write (ids, seal, event)",
        r"^(seal|new_event|secret_event|uuid7|associated_data) ",
        r"^\w+\.plan_batch ",
    ),
    ("    JSONResponse (render + send)", r"^(JSONResponse\.|Response\.__call__|Response\.render)", None),
    ("group committer task (db/store.py)", r"^GroupCommitter\.", None),
    ("  SQLite connection calls (main-thread side)", r"^SQLiteConnection\.(run|_call) ", None),
    ("  PostgreSQL statements (asyncpg)", r"\(asyncpg/", None),
    (
        "write plans (CreateSecret, ReadValue, UpdateSecret: in the writer's thread on SQLite)",
        r"^\w+\.plan_batch ",
        None,
    ),
    (
        "seal, wherever it runs (a create's in the vault, a new version's in its plan)",
        r"^seal \(service/crypto\.py",
        None,
    ),
    ("unseal, wherever it runs (a value read's plan)", r"^unseal \(service/crypto\.py", None),
    ("events made, wherever (secret_event, accessed_event)", r"^(secret_event|accessed_event) ", None),
    (
        "SQLite transaction outside the plans (BEGIN, COMMIT's fsync, WAL checkpoint)",
        r"^_in_transaction ",
        r"^run_plan ",
    ),
    (
        "SQLite thread waiting for work (an idle queue get py-spy counts)",
        r"^SQLiteConnection\._serve ",
        r"^(run_plan|_in_transaction|SQLiteConnection\._connect|<lambda>|SQLiteConnection\.run\.) ",
    ),
    ("outbox relay task", r"^OutboxRelay\.", None),
    ("  aiokafka (any caller)", r"\(aiokafka/", None),
    ("uvicorn protocol outside the app (parse, write)", r"^HttpToolsProtocol\.", None),
]
# Threads other than the main one get their own inclusive summary when they hold this share of samples.
_THREAD_SHARE_MIN = 0.05


def summarize_profile(path: Path) -> dict[str, Any]:
    """Collapsed py-spy stacks (--threads, raw) -> share of samples per thread, category and step."""
    threads: Counter[str] = Counter()
    cats: dict[str, Counter[str]] = {}
    incl: dict[str, Counter[str]] = {}
    leaf: Counter[str] = Counter()
    total = 0
    inclusive = [
        (name, re.compile(rx), re.compile(unless) if unless else None) for name, rx, unless in _INCLUSIVE
    ]
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        count = int(n)
        frames = stack.split(";")
        tname = re.sub(r"^thread \(\w+\): ", "", frames[0])
        tname = re.sub(r"-\d+", "-N", tname)
        total += count
        threads[tname] += count
        category = "other"
        for frame in reversed(frames[1:]):
            hit = next((c for c, rx in _CATEGORIES if rx.search(frame)), None)
            if hit:
                category = hit
                break
        cats.setdefault(tname, Counter())[category] += count
        steps = incl.setdefault(tname, Counter())
        for name, rx, unless in inclusive:
            if any(rx.search(f) for f in frames[1:]) and not (
                unless and any(unless.search(f) for f in frames[1:])
            ):
                steps[name] += count
        if tname == "MainThread":
            leaf[frames[-1]] += count

    def share(c: Counter[str], t: int, top: int | None = None) -> dict[str, float]:
        return {k: round(v / t, 4) for k, v in c.most_common(top)} if t else {}

    def steps_of(tname: str) -> dict[str, float]:
        t = threads[tname]
        return {name: round(incl[tname][name] / t, 4) for name, _, _ in _INCLUSIVE} if t else {}

    main_total = threads["MainThread"]
    others = [
        t for t, n in threads.most_common() if t != "MainThread" and total and n / total >= _THREAD_SHARE_MIN
    ]
    return {
        "samples": total,
        "main_thread_samples": main_total,
        "threads": share(threads, total),
        "main_thread_self_by_category": share(cats.get("MainThread", Counter()), main_total),
        "main_thread_inclusive": steps_of("MainThread"),
        "main_thread_top_leaf_frames": share(leaf, main_total, 25),
        # the busier other threads (the SQLite committer runs the write plans and commits)
        "other_threads_self_by_category": {t: share(cats[t], threads[t]) for t in others},
        "other_threads_inclusive": {t: {k: v for k, v in steps_of(t).items() if v} for t in others},
    }


_PACKAGES = (
    "uvicorn",
    "starlette",
    "uvloop",
    "httptools",
    "databases",
    "aiosqlite",
    "SQLAlchemy",
    "aiokafka",
    "cryptography",
)


def machine() -> dict[str, Any]:
    def version(pkg: str) -> str | None:
        try:
            return importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            return None

    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next(
        (ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if ln.startswith("model name")), "?"
    )
    mem_kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))  # type: ignore[union-attr]
    osrel = (
        dict(ln.split("=", 1) for ln in Path("/etc/os-release").read_text().splitlines() if "=" in ln)
        .get("PRETTY_NAME", "?")
        .strip('"')
    )
    git = lambda *a: subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()  # noqa: E731
    wrk_v = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.splitlines()[:1]
    kcat_v = subprocess.run(["kcat", "-V"], capture_output=True, text=True).stdout.splitlines()[:1]
    kafka_v = re.search(r"KAFKA_VERSION=(\S+)", (ROOT / "scripts" / "kafka-local").read_text())
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "os": osrel,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "packages": {p: version(p) for p in _PACKAGES},
        "wrk": wrk_v[0] if wrk_v else None,
        "kcat": kcat_v[0] if kcat_v else None,
        "kafka": kafka_v.group(1) if kafka_v else None,
        "git_commit": git("rev-parse", "--short", "HEAD"),
        "git_dirty_service": bool(git("status", "--porcelain", "--", "service")),
    }


def _verdict(t: dict[str, Any]) -> str:
    if t["pass"] is None:
        return "skipped" if t["measured"] == "n/a" else "reported"
    return "PASS" if t["pass"] else "**FAIL**"


def source_label(res: dict[str, Any]) -> str:
    src, m = res["service_source"], res["machine"]
    if src.get("ref"):
        return f"git {src['ref']} = {src['commit'][:10]} (service/ sha256 {src['service_sha256']})"
    dirty = ", uncommitted changes in service/" if m["git_dirty_service"] else ""
    return f"working tree at {m['git_commit']}{dirty} (service/ sha256 {src['service_sha256']})"


def _verification_line(res: dict[str, Any]) -> str:
    v, route = res["verification"], res.get("route", "create")
    topic = (
        f"topic: {v['topic_records']:,} records ({v['topic_duplicates']} published twice), "
        f"{v['outbox_events_missing_on_topic']} of {v['outbox_events']:,} outbox events missing"
    )
    if route == "read":
        return (
            f"Verification: {v['answers_200']:,} 200s, {v['accessed_events']:,} secret.accessed events with the "
            f"rounds' request ids ({v['accessed_events'] - v['answers_200']} beyond the 200s: requests cut off when "
            f"wrk stopped; {v['duplicate_request_ids']} request ids repeated); {topic}."
        )
    if route == "update":
        return (
            f"Verification: {v['answers_200']:,} 200s, {v['updated_events']:,} secret.updated events with the "
            f"rounds' request ids, {v['versions_added']:,} versions added to {v['secrets_updated']:,} secrets "
            f"({v['secrets_inconsistent']} whose version, events and kept versions disagree); {topic}."
        )
    return (
        f"Verification: {v['answers_201']:,} 201s, {v['rows_created_by_service']:,} rows created by the service "
        f"({v['rows_beyond_201s']} beyond the 201s: requests cut off when wrk stopped); topic: {v['topic_records']:,} records, "
        f"{v['topic_distinct_secrets']:,} distinct secrets, {v['rows_without_event']} rows without an event, "
        f"{v['events_without_row']} events without a row, {v['outbox_events_missing_on_topic']} outbox events missing."
    )


def markdown(res: dict[str, Any]) -> str:
    s, m, st = res["summary"], res["machine"], res["settings"]
    route = res.get("route", "create")
    ok = "201" if route == "create" else "200"
    f = lambda v, spec=".1f": "-" if v is None else format(v, spec)  # noqa: E731
    replicas = st.get("replicas", 1)
    lines = [
        f"# Benchmark: {route} ({res.get('route_request', 'POST /api/secrets')}) on "
        f"{'PostgreSQL' if res.get('database') == 'postgresql' else 'SQLite'} — {res['timestamp']}",
        "",
        f"`{res['command']}` · wrk -t{st['threads']} -c{st['connections']} -d{st['duration_s']}s, "
        f"{st['rounds']} alternating rounds · {st.get('database_server', 'SQLite `synchronous=FULL`')}, Kafka relay on"
        + (f" · {replicas} replicas behind {st['balancer']}" if replicas > 1 else "")
        + f" · service: {source_label(res)}",
        "",
        f"Machine: {m['nproc']} x {m['cpu_model']}, {m['memory_gb']} GB, {m['os']}, Python {m['python']}, "
        f"uvicorn {m['packages']['uvicorn']}, Starlette {m['packages']['starlette']}, SQLite {m['sqlite']}, "
        f"Kafka {m['kafka']}. Load from outside the run before it started: {m['background_cpu_cores_before_run']} cores.",
        "",
        f"| Round | Service req/s | p50 ms | p99 ms | p99/p50 | errors | non-{ok} | Bare req/s | p50 ms | p99 ms | p99/p50 "
        "| errors | Service/bare | Outside load (cores) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rounds = res["rounds"]
    base_label = {"create": "empty DB"}.get(
        route, f"{(res.get('route_setup') or {}).get('secrets', 0):,} secrets"
    )
    for phase, label in (("empty", base_label), ("prefilled", f"{(s['prefilled_rows'] or 0):,} stored")):
        svc = [r for r in rounds if r["kind"] == "service" and r["phase"] == phase]
        bare = [r for r in rounds if r["kind"] == "bare" and r["phase"] == phase]
        for i, sv in enumerate(svc):
            b = bare[i] if i < len(bare) else None
            lines.append(
                f"| {label} #{sv['index']} | {sv['rps']:,.0f} | {sv['p50_ms']:.1f} | {sv['p99_ms']:.1f} | "
                f"{f(sv.get('tail_p99_over_p50'), '.2f')} | {sv['errors']} | {sv[f'non_{ok}']} | "
                + (
                    f"{b['rps']:,.0f} | {b['p50_ms']:.1f} | {b['p99_ms']:.1f} | {f(b.get('tail_p99_over_p50'), '.2f')} | "
                    f"{b['errors']} | "
                    if b
                    else "- | - | - | - | - | "
                )
                + f"{f(sv.get('ratio_to_bare'), '.1%')} | {f(sv.get('outside_cpu_cores'), '.2f')} / "
                f"{f(b.get('outside_cpu_cores') if b else None, '.2f')} |"
            )
        if phase == "empty" and svc:
            lines.append(
                f"| **median** | **{s['service_rps_median']:,.0f}** | {s['service_p50_ms_median']:.1f} | "
                f"{s['service_p99_ms_median']:.1f} | {f(s.get('service_tail_median'), '.2f')} | | | "
                f"**{s['bare_rps_median']:,.0f}** | {s['bare_p50_ms_median']:.1f} | {s['bare_p99_ms_median']:.1f} | "
                f"{f(s.get('bare_tail_median'), '.2f')} | | **{s['ratio_median']:.1%}** | |"
            )
    if replicas > 1:
        lines += [
            "",
            f"| Round | 1 replica direct req/s | 1 behind nginx req/s | {replicas} behind nginx req/s | p50 ms | p99 ms "
            f"| p99/p50 | errors | non-{ok} | {replicas} / 1 behind nginx | {replicas} / 1 direct |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for phase, label in (("empty", base_label), ("prefilled", f"{(s['prefilled_rows'] or 0):,} stored")):
            direct = [r for r in rounds if r["kind"] == "service" and r["phase"] == phase]
            one = [r for r in rounds if r["kind"] == "lb1" and r["phase"] == phase]
            two = [r for r in rounds if r["kind"] == "lb2" and r["phase"] == phase]
            for d, r1, r2 in zip(direct, one, two, strict=False):
                lines.append(
                    f"| {label} #{r2['index']} | {d['rps']:,.0f} | {r1['rps']:,.0f} | {r2['rps']:,.0f} | "
                    f"{r2['p50_ms']:.1f} | {r2['p99_ms']:.1f} | {f(r2.get('tail_p99_over_p50'), '.2f')} | "
                    f"{r2['errors']} | {r2[f'non_{ok}']} | {f(r2.get('multiple_of_lb1'), '.2f')}x | "
                    f"{f(r2.get('multiple_of_direct'), '.2f')}x |"
                )
    probe_round = next((r for r in rounds if r["phase"] == "probe"), None)
    if probe_round:
        ep = probe_round["event_probe"]
        lines += [
            "",
            f"Event latency (answer → its event readable by a consumer), {ep['events_seen']} probes every "
            f"{ep['interval_s'] * 1000:.0f} ms during a {probe_round['rps']:,.0f} req/s round: "
            f"p50 {f(ep['latency_ms']['p50'])} ms, p99 {f(ep['latency_ms']['p99'])} ms, max {f(ep['latency_ms']['max'])} ms; "
            f"{ep['events_missing']} missing.",
        ]
    if s["prefilled_vs_empty"] is not None:
        lines.append(
            f"With {s['prefilled_rows']:,} secrets stored: {s['prefilled_service_rps_median']:,.0f} req/s = "
            f"{s['prefilled_vs_empty']:.1%} of the {base_label} median; service/bare {f(s['prefilled_ratio_median'], '.1%')} "
            f"vs {f(s['ratio_median'], '.1%')} before = {f(s.get('prefilled_vs_empty_normalized'), '.1%')}; "
            f"prefill took {res['prefill']['seconds']} s."
        )
    lines += [
        f"Peak RSS of the service: {_rss(s)} (bare app {s['bare_peak_rss_mb']:.1f} MB). "
        f"Service CPU per request: {f(s['service_cpu_us_per_request_median'], '.0f')} µs "
        f"(bare {f(s['bare_cpu_us_per_request_median'], '.0f')} µs). Other load on the machine during the rounds: "
        f"{f(s['other_cpu_cores_median'], '.2f')} cores (median; wrk excluded), of which "
        f"{f(s.get('outside_cpu_cores_median'), '.2f')} outside the run (other sessions, and "
        f"{f(s.get('stolen_cpu_cores_median'), '.2f')} stolen by the host for other virtual machines; the rest is the run's own "
        "Kafka"
        + (", PostgreSQL" if res.get("database") == "postgresql" else "")
        + (", nginx" if replicas > 1 else "")
        + ").",
        _verification_line(res),
        "",
        "| Target | Measured | Result |",
        "|---|---|---|",
    ]
    lines += [f"| {t['target']} | {t['measured']} | {_verdict(t)} |" for t in res["targets"]]
    if res.get("profile"):
        p = res["profile"]
        lines += [
            "",
            f"Profile (py-spy, one unscored service round at {p['round_rps']:,.0f} req/s; {p['samples']} samples, "
            + ", ".join(f"{k} {v:.0%}" for k, v in p["threads"].items())
            + "). Main thread, self time by library: "
            + ", ".join(f"{k} {v:.0%}" for k, v in list(p["main_thread_self_by_category"].items())[:8])
            + ". Main thread, inclusive: "
            + ", ".join(f"{k.strip()} {v:.0%}" for k, v in p["main_thread_inclusive"].items() if v)
            + ".",
        ]
        for thread, steps in (p.get("other_threads_inclusive") or {}).items():
            if not steps:  # e.g. an idle executor thread: no step of the service's
                continue
            lines.append(
                f"Thread {thread} ({p['threads'][thread]:.0%} of samples), inclusive: "
                + ", ".join(f"{k.strip()} {v:.0%}" for k, v in steps.items())
                + "."
            )
    return "\n".join(lines) + "\n"
