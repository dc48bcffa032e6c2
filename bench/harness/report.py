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

TARGETS = {
    "ratio_min": 0.40,
    "p99_ms_max": 25.0,
    "event_p99_ms_max": 250.0,
    "prefilled_within": 0.10,
    "rss_mb_max": 200.0,
}


def compute_targets(
    summary: dict[str, Any], verification: dict[str, Any], connections: int
) -> list[dict[str, Any]]:
    """The issue's targets, measured. The 1M comparison uses service/bare ratios (robust to machine drift)."""
    s = summary
    norm = s.get("prefilled_vs_empty_normalized")
    ev_p99 = s["event_latency_ms"]["p99"] if s["event_latency_ms"] else None
    targets = [
        ("Throughput >= 40% of bare (median of per-round ratios)", f"{s['ratio_median']:.1%}", s["ratio_median"] >= TARGETS["ratio_min"]),
        (f"p99 < 25 ms at {connections} connections (worst empty-DB round)", f"{s['service_p99_ms_max']:.1f} ms", s["service_p99_ms_max"] < TARGETS["p99_ms_max"]),
        ("0 errors and 0 non-201 (all service rounds)", f"{s['service_errors_total']} errors, {s['service_non_201_total']} non-201",
         s["service_errors_total"] == 0 and s["service_non_201_total"] == 0),
        ("Event latency p99 < 250 ms under load", "n/a" if ev_p99 is None else f"{ev_p99:.0f} ms (missing {s['event_probe_missing']})",
         ev_p99 is not None and ev_p99 < TARGETS["event_p99_ms_max"] and not s["event_probe_missing"]),
        (f"With {s['prefilled_rows'] or 0:,} stored: throughput within 10% of empty (service/bare vs empty DB's)",
         "n/a" if norm is None else f"{norm:.1%} of empty (raw req/s: {s['prefilled_vs_empty']:.1%})",
         None if norm is None else norm >= 1 - TARGETS["prefilled_within"]),
        ("Peak RSS of the service < 200 MB", f"{s['peak_rss_mb']:.1f} MB", s["peak_rss_mb"] < TARGETS["rss_mb_max"]),
        ("Every 201 is a row in the database", f"{verification['answers_201']:,} 201s, {verification['rows_created_by_service']:,} rows",
         verification["every_201_in_db"]),
        ("Topic has an event for every row", f"{verification['rows_without_event']} rows without event",
         verification["events_cover_rows"]),
    ]  # fmt: skip
    return [{"target": t, "measured": m, "pass": None if p is None else bool(p)} for t, m, p in targets]


# --------------------------------------------------------------------------- profile summary

# Self time: each sample goes to the category of its leaf-most frame that matches one
# (frames look like "function (path/file.py:line)"). Native code (uvloop, httptools,
# sqlite3, OpenSSL) has no frame of its own: it is charged to the Python frame that called it.
_CATEGORIES = [
    ("relay / Kafka producer", re.compile(r"\(aiokafka/|\(service/events/|\(kafka/")),
    (
        "crypto (AES-GCM seal, API-key hash)",
        re.compile(r"\(cryptography/|\(service/crypto\.py|\(hmac\.py|\(hashlib"),
    ),
    ("auth", re.compile(r"\(service/accounts/")),
    (
        "JSON parse + validation",
        re.compile(r"\(service/http/validation\.py|\(json/decoder\.py|^loads \(json/"),
    ),
    (
        "SQLite driver thread hop (service/db/sqlite.py, sqlite3)",
        re.compile(r"\(service/db/sqlite\.py|\(sqlite3/"),
    ),
    ("service store / vault / plans", re.compile(r"\(service/(db|secrets)/")),
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

# Inclusive time: share of samples with a matching frame anywhere on the stack.
_INCLUSIVE = [
    ("HTTP request handled in the app (Starlette.__call__)", r"^Starlette\.__call__ "),
    ("  create_secret route", r"^create_secret \(service/http/routes\.py"),
    ("    authenticate", r"^Authenticator\.authenticate "),
    (
        "    read + parse + validate body",
        r"^(Request\.body|parse_json_object|parse_new_secret|check_json_content_type) ",
    ),
    (
        "    Vault.create before the write (ids, seal, event)",
        r"^(seal|new_event|secret_event|uuid7|associated_data) ",
    ),
    ("    JSONResponse (render + send)", r"^(JSONResponse\.|Response\.__call__|Response\.render)"),
    ("group committer task (db/store.py)", r"^GroupCommitter\."),
    ("  SQLite connection calls (main-thread side)", r"^SQLiteConnection\."),
    ("outbox relay task", r"^OutboxRelay\."),
    ("  aiokafka (any caller)", r"\(aiokafka/"),
    ("uvicorn protocol outside the app (parse, write)", r"^HttpToolsProtocol\."),
]


def summarize_profile(path: Path) -> dict[str, Any]:
    """Collapsed py-spy stacks (--threads, raw) -> share of samples per thread, category and frame."""
    threads: Counter[str] = Counter()
    cats_main: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    total = main_total = 0
    inclusive = [(name, re.compile(rx)) for name, rx in _INCLUSIVE]
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
        if tname != "MainThread":
            continue
        main_total += count
        category = "other"
        for frame in reversed(frames[1:]):
            hit = next((c for c, rx in _CATEGORIES if rx.search(frame)), None)
            if hit:
                category = hit
                break
        cats_main[category] += count
        for name, rx in inclusive:
            if any(rx.search(f) for f in frames[1:]):
                incl[name] += count
        leaf[frames[-1]] += count

    def share(c: Counter[str], t: int, top: int | None = None) -> dict[str, float]:
        return {k: round(v / t, 4) for k, v in c.most_common(top)} if t else {}

    return {
        "samples": total,
        "main_thread_samples": main_total,
        "threads": share(threads, total),
        "main_thread_self_by_category": share(cats_main, main_total),
        "main_thread_inclusive": {name: round(incl[name] / main_total, 4) for name, _ in _INCLUSIVE}
        if main_total
        else {},
        "main_thread_top_leaf_frames": share(leaf, main_total, 25),
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


def _verdict(ok: bool | None) -> str:
    return "skipped" if ok is None else "PASS" if ok else "**FAIL**"


def source_label(res: dict[str, Any]) -> str:
    src, m = res["service_source"], res["machine"]
    if src.get("ref"):
        return f"git {src['ref']} = {src['commit'][:10]} (service/ sha256 {src['service_sha256']})"
    dirty = ", uncommitted changes in service/" if m["git_dirty_service"] else ""
    return f"working tree at {m['git_commit']}{dirty} (service/ sha256 {src['service_sha256']})"


def markdown(res: dict[str, Any]) -> str:
    s, m, st = res["summary"], res["machine"], res["settings"]
    f = lambda v, spec=".1f": "-" if v is None else format(v, spec)  # noqa: E731
    lines = [
        f"# Create-path benchmark — {res['timestamp']}",
        "",
        f"`{res['command']}` · wrk -t{st['threads']} -c{st['connections']} -d{st['duration_s']}s, "
        f"{st['rounds']} alternating rounds · SQLite `synchronous=FULL`, Kafka relay on · "
        f"service: {source_label(res)}",
        "",
        f"Machine: {m['nproc']} x {m['cpu_model']}, {m['memory_gb']} GB, {m['os']}, Python {m['python']}, "
        f"uvicorn {m['packages']['uvicorn']}, Starlette {m['packages']['starlette']}, SQLite {m['sqlite']}, "
        f"Kafka {m['kafka']}.",
        "",
        "| Round | Service req/s | p50 ms | p99 ms | errors | non-201 | Bare req/s | p50 ms | p99 ms | errors | Service/bare |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rounds = res["rounds"]
    for phase, label in (("empty", "empty DB"), ("prefilled", f"{(s['prefilled_rows'] or 0):,} stored")):
        svc = [r for r in rounds if r["kind"] == "service" and r["phase"] == phase]
        bare = [r for r in rounds if r["kind"] == "bare" and r["phase"] == phase]
        for i, sv in enumerate(svc):
            b = bare[i] if i < len(bare) else None
            lines.append(
                f"| {label} #{sv['index']} | {sv['rps']:,.0f} | {sv['p50_ms']:.1f} | {sv['p99_ms']:.1f} | {sv['errors']} | "
                f"{sv['non_201']} | "
                + (
                    f"{b['rps']:,.0f} | {b['p50_ms']:.1f} | {b['p99_ms']:.1f} | {b['errors']} | "
                    if b
                    else "- | - | - | - | "
                )
                + f"{f(sv.get('ratio_to_bare'), '.1%')} |"
            )
        if phase == "empty" and svc:
            lines.append(
                f"| **median** | **{s['service_rps_median']:,.0f}** | {s['service_p50_ms_median']:.1f} | "
                f"{s['service_p99_ms_median']:.1f} | | | **{s['bare_rps_median']:,.0f}** | {s['bare_p50_ms_median']:.1f} | "
                f"{s['bare_p99_ms_median']:.1f} | | **{s['ratio_median']:.1%}** |"
            )
    probe_round = next((r for r in rounds if r["phase"] == "probe"), None)
    if probe_round:
        ep = probe_round["event_probe"]
        lines += [
            "",
            f"Event latency (201 → record readable by a consumer), {ep['events_seen']} probes every "
            f"{ep['interval_s'] * 1000:.0f} ms during a {probe_round['rps']:,.0f} req/s round: "
            f"p50 {f(ep['latency_ms']['p50'])} ms, p99 {f(ep['latency_ms']['p99'])} ms, max {f(ep['latency_ms']['max'])} ms; "
            f"{ep['events_missing']} missing.",
        ]
    if s["prefilled_vs_empty"] is not None:
        lines.append(
            f"With {s['prefilled_rows']:,} secrets stored: {s['prefilled_service_rps_median']:,.0f} req/s = "
            f"{s['prefilled_vs_empty']:.1%} of the empty-DB median; service/bare {f(s['prefilled_ratio_median'], '.1%')} "
            f"vs {f(s['ratio_median'], '.1%')} on the empty DB = {f(s.get('prefilled_vs_empty_normalized'), '.1%')}; "
            f"prefill took {res['prefill']['seconds']} s."
        )
    v = res["verification"]
    lines += [
        f"Peak RSS of the service: {s['peak_rss_mb']:.1f} MB (bare app {s['bare_peak_rss_mb']:.1f} MB). "
        f"Service CPU per request: {f(s['service_cpu_us_per_request_median'], '.0f')} µs "
        f"(bare {f(s['bare_cpu_us_per_request_median'], '.0f')} µs). Other load on the machine during the rounds: "
        f"{f(s['other_cpu_cores_median'], '.2f')} cores (median; wrk excluded).",
        f"Verification: {v['answers_201']:,} 201s, {v['rows_created_by_service']:,} rows created by the service "
        f"({v['rows_beyond_201s']} beyond the 201s: requests cut off when wrk stopped); topic: {v['topic_records']:,} records, "
        f"{v['topic_distinct_secrets']:,} distinct secrets, {v['rows_without_event']} rows without an event, "
        f"{v['events_without_row']} events without a row.",
        "",
        "| Target | Measured | Result |",
        "|---|---|---|",
    ]
    lines += [f"| {t['target']} | {t['measured']} | {_verdict(t['pass'])} |" for t in res["targets"]]
    if res.get("profile"):
        p = res["profile"]
        lines += [
            "",
            f"Profile (py-spy, one unscored service round at {p['round_rps']:,.0f} req/s; {p['samples']} samples, "
            + ", ".join(f"{k} {v:.0%}" for k, v in p["threads"].items())
            + "). Main thread, self time by library: "
            + ", ".join(f"{k} {v:.0%}" for k, v in list(p["main_thread_self_by_category"].items())[:8])
            + ". Main thread, inclusive: "
            + ", ".join(f"{k.strip()} {v:.0%}" for k, v in p["main_thread_inclusive"].items())
            + ".",
        ]
    return "\n".join(lines) + "\n"
