"""The rows a prefill inserts, shaped like a row the service made (for either database).

Both prefills (sqlite.py, postgres.py) read the schema at run time and copy a template:
a secret the service created in this run. Per row they make the id (UUIDv7, in the
past, ascending), the name, the ISO timestamps and the sealed value (same length, same
header, random body); a `version` column is 1 (a prefilled secret was never updated);
any other column is copied, or made unique per row if a unique index needs it.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import time
from collections.abc import Sequence
from typing import Any

ISO_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
# Per-project counters (projects.secret_count): advanced by the prefill when they equal the row count.
COUNTER_COLUMN = re.compile(r"count|total|num_|^n_|secrets", re.I)
# The service's sealed format (service/crypto.py): format byte, key-id length, key id, then random-looking bytes.
SEALED_FORMATS = (1, 2)


def uuid7(ms: int, rnd: bytes) -> str:
    value = ms << 80 | int.from_bytes(rnd, "big")
    value = (value & ~(0xF << 76)) | (0x7 << 76)
    value = (value & ~(0x3 << 62)) | (0x2 << 62)
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def iso_ms(ms: int) -> str:
    return (
        dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def sealed_header(blob: bytes) -> bytes:
    """The part of a sealed value that names its format and key (kept), before the random part."""
    if len(blob) > 2 and blob[0] in SEALED_FORMATS and 2 + blob[1] <= len(blob):
        return blob[: 2 + blob[1]]
    return b""


class RowMaker:
    """Row i of n, for the columns given, from a template row (a dict of column -> value)."""

    def __init__(
        self,
        columns: Sequence[str],
        template: dict[str, Any],
        project_id: str,
        name_prefix: str,
        n: int,
        unique_columns: set[str],
    ) -> None:
        self.columns = list(columns)
        self.template = template
        self.project_id = project_id
        self.name_prefix = name_prefix
        self.unique_columns = unique_columns
        now_ms = int(time.time() * 1000)
        self.start_ms = now_ms - 30 * 24 * 3600 * 1000  # a month ago, one row every ~2.6 ms (1M rows)
        self.step = max(1, (now_ms - 3_600_000 - self.start_ms) // max(n, 1))
        blob = next((v for v in template.values() if isinstance(v, bytes)), b"")
        self.header = sealed_header(blob)

    def row(self, i: int) -> tuple[Any, ...]:
        ms = self.start_ms + i * self.step
        out: list[Any] = []
        for c in self.columns:
            tv = self.template[c]
            if c == "id":
                out.append(uuid7(ms, os.urandom(10)))
            elif c == "project_id":
                out.append(self.project_id)
            elif c == "name":
                out.append(f"{self.name_prefix}_{i:07d}")
            elif c == "version":
                out.append(1)
            elif isinstance(tv, bytes):
                out.append(self.header + os.urandom(len(tv) - len(self.header)))
            elif isinstance(tv, str) and ISO_MS.fullmatch(tv):
                out.append(iso_ms(ms))
            elif c in self.unique_columns:
                out.append(f"{tv}-prefill-{i}")
            else:
                out.append(tv)
        return tuple(out)
