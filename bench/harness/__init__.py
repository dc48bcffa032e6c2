"""The create-path benchmark behind bench/run (see bench/README.md).

cli        the command line (options, defaults, --help) and the results files it writes
run        Bench: one run, from starting the processes to the result dict
routes     what wrk sends: one class per API route, with its wrk script and arguments
load       wrk, the HTTP clients and the event-latency probe (kcat)
processes  the processes a run starts and stops, ports, CPU and memory accounting
sqlite     the service's SQLite file seen from outside: row and outbox counts, the prefill
report     the targets, the markdown table, the machine description, the profile summary

Standard library only: bench/run re-executes itself with .venv/bin/python before importing it.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
