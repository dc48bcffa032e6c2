"""Identifiers: UUID strings made from one OS randomness read, without uuid.UUID objects."""

from __future__ import annotations

import os
import time


def uuid7() -> str:
    """Time-ordered (RFC 9562 version 7): inserts land at the end of the primary-key index."""
    return _format((time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big"), 7)


def uuid4() -> str:
    return _format(int.from_bytes(os.urandom(16), "big"), 4)


def _format(value: int, version: int) -> str:
    value = (value & ~(0xF << 76)) | (version << 76)
    value = (value & ~(0x3 << 62)) | (0x2 << 62)
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
