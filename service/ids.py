"""Randomness and identifiers, without a system call each.

Reading the OS CSPRNG costs a system call (0.5 to 15 us on this kind of VM, depending
on the day, four times per create) plus about 3 ns a byte. random_bytes serves its
output from a buffer refilled 4 KiB at a time, as OpenSSL's RAND does from its seed:
every byte is still the kernel's, used once. (A 64 KiB refill cost 200 us at a go,
for no gain per byte.) The buffer is dropped in a forked child, which must never
repeat its parent's bytes (a repeated nonce would break AES-GCM).
"""

from __future__ import annotations

import os
import threading
import time

_REFILL = 4096
_pool = b""
_offset = 0
_lock = threading.Lock()


def random_bytes(n: int) -> bytes:
    """n bytes from the OS CSPRNG, each handed out once."""
    global _pool, _offset
    with _lock:
        if _offset + n > len(_pool):
            _pool, _offset = os.urandom(max(_REFILL, n)), 0
        chunk = _pool[_offset : _offset + n]
        _offset += n
    return chunk


def _forget_pool() -> None:
    global _pool, _offset
    _pool, _offset = b"", 0


os.register_at_fork(after_in_child=_forget_pool)


def uuid7() -> str:
    """Time-ordered (RFC 9562 version 7): inserts land at the end of the primary-key index."""
    raw = bytearray((time.time_ns() // 1_000_000).to_bytes(6, "big") + random_bytes(10))
    raw[6] = 0x70 | (raw[6] & 0x0F)  # version 7
    raw[8] = 0x80 | (raw[8] & 0x3F)  # variant 10
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def request_id() -> str:
    return random_bytes(16).hex()
