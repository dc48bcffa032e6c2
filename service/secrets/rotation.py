"""Master-key rotation: re-wrap every value's data key (every kept version's) under the primary master key."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from service.crypto import Binding, Keyring, rewrap
from service.db.plan import StatementJob
from service.db.store import Store
from service.secrets import sql


@dataclass(frozen=True, slots=True)
class Rewrapped:
    rewrapped: int
    # Values still wrapped by another key, by key id: written meanwhile by a replica that
    # still seals under an old key (restart it with the new key first), or changed during the pass.
    remaining: dict[str, int]


async def rewrap_all(store: Store, keyring: Keyring, batch: int = 500) -> Rewrapped:
    """Re-wrap the data key of every value not under the primary master key, current and previous versions.

    Each swap is a compare-and-set on the stored blob: a value replaced meanwhile (a PUT
    on another replica) is left as that PUT wrote it, and counted as remaining.
    """
    primary = keyring.primary_id
    done = 0
    after = ""
    while rows := await store.fetch(sql.current_values_not_under(primary, after, batch)):
        swaps = []
        for secret_id, project_id, name, version, sealed in rows:
            old = bytes(sealed)
            new = rewrap(keyring, old, Binding(project_id, secret_id, name, version))
            swaps.append(StatementJob(sql.replace_current_value(secret_id, old, new, primary)))
        done += await _commit(store, swaps)
        after = rows[-1][0]
    previous_after = ("", 0)
    while rows := await store.fetch(sql.previous_values_not_under(primary, previous_after, batch)):
        swaps = []
        for secret_id, project_id, name, version, sealed in rows:
            old = bytes(sealed)
            new = rewrap(keyring, old, Binding(project_id, secret_id, name, version))
            swaps.append(StatementJob(sql.replace_previous_value(secret_id, version, old, new, primary)))
        done += await _commit(store, swaps)
        previous_after = (rows[-1][0], rows[-1][3])
    counts = await key_status(store)
    return Rewrapped(done, {key_id: n for key_id, n in counts.items() if key_id != primary})


async def _commit(store: Store, swaps: list[StatementJob]) -> int:
    """Submitted together, so the group committer commits them in a few transactions, not one each."""
    changed = await asyncio.gather(*(store.write(swap) for swap in swaps))
    return sum(changed)


async def key_status(store: Store) -> dict[str, int]:
    """How many stored values (current and previous versions) each master key id wraps."""
    return {key_id: int(n) for key_id, n in await store.fetch(sql.values_per_key_id())}
