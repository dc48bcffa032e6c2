"""The loopback balancer in front of several replicas: nginx, with a config derived from config/nginx.conf.

The compose profile's config is taken as it is (its upstream and server blocks, timeouts,
keep-alive to the replicas, body limits, X-Request-ID handling) and changed only where a
private process on loopback must differ: its pid, error log and temp paths live in the
run's temp dir, it listens on 127.0.0.1, its upstream servers are the replicas' loopback
ports, and it writes no access log (a line per request is the balancer's cost, not the
service's; both pools pay it alike when it is on). One nginx serves several pools, one
port each, so "one replica behind the balancer" and "two replicas behind it" are measured
through the same process.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from . import ROOT

TEMPLATE = ROOT / "config" / "nginx.conf"


def _block(text: str, opening: str) -> tuple[int, int]:
    """(start, end) of the brace block that starts at the first match of `opening`."""
    match = re.search(opening, text, re.M)
    if match is None:
        raise ValueError(f"{TEMPLATE.name}: no block matching {opening!r}")
    depth = 0
    for i in range(text.index("{", match.start()), len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return match.start(), i + 1
    raise ValueError(f"{TEMPLATE.name}: unbalanced braces after {opening!r}")


def nginx_config(template: str, run_dir: Path, pools: dict[int, list[int]]) -> str:
    """The template's config for a private nginx: listen port -> the replica ports it balances over."""
    text = template
    text = re.sub(r"^pid\s+[^;]+;", f"pid {run_dir / 'nginx.pid'};", text, flags=re.M)
    text = re.sub(r"^error_log\s+\S+", f"error_log {run_dir / 'error.log'}", text, flags=re.M)
    text = re.sub(r"^(\s*)access_log\s+/[^;]+;", r"\1access_log off;", text, flags=re.M)
    text = re.sub(r"^\s*include\s+/etc/nginx/mime\.types;\n", "", text, flags=re.M)
    up_start, up_end = _block(text, r"^\s*upstream\s+(\w+)\s*\{")
    upstream = text[up_start:up_end]
    name = re.search(r"upstream\s+(\w+)", upstream).group(1)  # type: ignore[union-attr]
    server_line = re.search(r"^([ \t]*)server\s+\S+?(\s[^;]*)?;\n", upstream, re.M)
    if server_line is None:
        raise ValueError(f"{TEMPLATE.name}: no server line in upstream {name}")
    indent, params = server_line.group(1), server_line.group(2) or ""
    body_start, body_end = _block(text, r"^\s*server\s*\{")
    server = text[body_start:body_end]
    upstreams, servers = [], []
    for listen, replicas in pools.items():
        pool = f"{name}_{listen}"
        lines = "".join(f"{indent}server 127.0.0.1:{port}{params};\n" for port in replicas)
        first = upstream.index(server_line.group(0))
        others = re.sub(r"^[ \t]*server\s+[^;]*;\n", "", upstream[first:], flags=re.M)
        upstreams.append(upstream[:first].replace(name, pool, 1) + lines + others)
        servers.append(
            re.sub(r"listen\s+[^;]+;", f"listen 127.0.0.1:{listen};", server, count=1).replace(
                f"http://{name};", f"http://{pool};"
            )
        )
    temp_paths = "".join(
        f"    {kind}_temp_path {run_dir / kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    # servers first (the template's order is upstream, then server), then the upstreams in the upstream's place
    head, tail = text[:up_start], text[body_end:]
    middle = text[up_end:body_start]
    http_open = head.rindex("http {") + len("http {\n")
    head = head[:http_open] + temp_paths + head[http_open:]
    note = f"# Written by bench/run from {TEMPLATE.relative_to(ROOT)}: a private nginx on loopback (see balancer.py).\n"
    return note + head + "\n\n".join(upstreams) + middle + "\n\n".join(servers) + tail


def nginx_command(config: Path, run_dir: Path) -> list[str]:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    return [
        nginx,
        "-p",
        str(run_dir),
        "-e",
        str(run_dir / "error.log"),
        "-c",
        str(config),
        "-g",
        "daemon off;",
    ]
