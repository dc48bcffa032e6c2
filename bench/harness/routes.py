"""What wrk sends in a round: one class per API route, each with its wrk script.

A route is its wrk script (bench/<route>.lua; done() prints one "BENCH_RESULT {json}" line)
and the arguments the script takes after `--`. Another route goes beside CreateRoute, with
whatever setup its script needs before the rounds; Bench.route says which one a run loads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from . import BENCH


class Route(Protocol):
    name: str
    path: str
    script: Path

    def script_args(self, token: str, prefix: str, count: bool) -> list[str]: ...


class CreateRoute:
    """POST /api/secrets with a unique name per request: PREFIX_<wrk thread>_<counter>.

    bench/run passes a prefix unique per round, so names never repeat within a run and the
    rows of a round can be counted by prefix. With "count", the script's response() tallies
    every status code (see bench/README.md for what that costs wrk).
    """

    name = "create"
    path = "/api/secrets"
    script = BENCH / "create.lua"

    def script_args(self, token: str, prefix: str, count: bool) -> list[str]:
        return [token, prefix, *(["count"] if count else [])]


CREATE = CreateRoute()
