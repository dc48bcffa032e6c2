"""Looking for a secret where it must never be: in any form a careless encoder would leave it."""

from __future__ import annotations

import base64

CANARY = "canary-7f3a9c-DO-NOT-LEAK"


def secret_forms(secret: str) -> list[bytes]:
    """Byte strings whose presence would reveal `secret`: itself, its hex, and its base64 at every alignment."""
    raw = secret.encode()
    forms = [raw, raw.hex().encode()]
    for alphabet in (base64.b64encode, base64.urlsafe_b64encode):
        for shift in range(3):
            encoded = alphabet(b"\0" * shift + raw).rstrip(b"=")
            # Drop the characters that mix in the padding bytes or whatever follows the secret.
            forms.append(encoded[(4 if shift else 0) : -4])
    return forms


def leaked(secret: str, *blobs: bytes | str) -> bool:
    """Whether any form of `secret` occurs in any blob (never prints either)."""
    forms = secret_forms(secret)
    for blob in blobs:
        data = blob.encode() if isinstance(blob, str) else blob
        if any(form in data for form in forms):
            return True
    return False
