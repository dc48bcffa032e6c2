"""Master-key rotation: re-wrap every value's data key under the primary master key."""

from __future__ import annotations

from service.crypto import Keyring, associated_data, rewrap
from service.db.plan import StatementJob
from service.db.store import Store
from service.secrets import sql


async def rewrap_all(store: Store, keyring: Keyring, batch: int = 500) -> int:
    """Re-wrap every data key not under the primary master key; returns how many were re-wrapped.

    Each swap is a compare-and-set on the stored blob: a value replaced meanwhile (a PUT
    on another replica) is left as that PUT wrote it, and looked at again next round.
    """
    done = 0
    while True:
        rows = await store.fetch(sql.sealed_values_not_under(keyring.primary_id, batch))
        for secret_id, project_id, name, sealed in rows:
            old = bytes(sealed)
            new = rewrap(keyring, old, associated_data(project_id, secret_id, name))
            done += await store.write(
                StatementJob(sql.replace_sealed_value(secret_id, old, new, keyring.primary_id))
            )
        if len(rows) < batch:
            return done
