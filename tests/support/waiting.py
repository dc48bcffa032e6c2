"""Waiting for something to become true, always with a deadline."""

from __future__ import annotations

import asyncio
from typing import Any


async def poll_until(check: Any, timeout: float, interval: float = 0.25, what: str = "condition") -> Any:
    """Call `check()` (sync or async) until it returns something truthy; fail after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if loop.time() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(interval)
