"""Envelope encryption: rotation, fresh keys, nothing printable."""

from __future__ import annotations

from service.crypto import (
    Binding,
    Keyring,
    generate_master_key_entry,
    rewrap,
    seal,
    sealed_key_id,
    unseal,
)
from service.settings import Secret


def test_rotation_rewraps_the_data_key_without_touching_the_value() -> None:
    old = generate_master_key_entry("old")
    new = generate_master_key_entry("new")
    aad = Binding("p", "s", "NAME", 1)
    sealed = seal(Keyring.parse(old), "value", aad)
    rotated_ring = Keyring.parse(f"{new},{old}")
    assert unseal(rotated_ring, sealed, aad) == "value", "old keys still open"
    rewrapped = rewrap(rotated_ring, sealed, aad)
    assert sealed_key_id(rewrapped) == "new"
    assert rewrapped[-(12 + 5 + 16) :] == sealed[-(12 + 5 + 16) :], "value ciphertext unchanged"
    assert unseal(Keyring.parse(new), rewrapped, aad) == "value"


def test_each_seal_uses_a_fresh_key_and_nonce() -> None:
    keyring = Keyring.parse(generate_master_key_entry("k"))
    aad = Binding("p", "s", "N", 1)
    assert seal(keyring, "same", aad) != seal(keyring, "same", aad)


def test_keyring_repr_shows_no_key_material() -> None:
    entry = generate_master_key_entry("k")
    keyring = Keyring.parse(entry)
    assert entry.split(":")[1] not in repr(keyring)
    assert entry.split(":")[1] not in repr(Secret(entry))


def test_a_forked_child_never_repeats_its_parents_randomness() -> None:
    import os

    from service.ids import random_bytes

    random_bytes(16)  # the parent's buffer is filled
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write, random_bytes(32))
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 32)
    os.close(read)
    os.close(write)
    parent = random_bytes(32)
    assert child != parent
