"""Envelope encryption of secret values and hashing of API keys.

A value is encrypted with a fresh 256-bit data key; the data key is wrapped by the
primary master key. Both AES-256-GCM operations take associated data naming the
project, the secret, its name and (format 2) the value's version, so a stored blob
only opens as the version of the row it was written for. Rotating master keys
re-wraps data keys; values are never re-encrypted.

Sealed format, versions 1 and 2 (the first byte):
    format:u8 | len(key_id):u8 | key_id | wrap_nonce:12 | wrapped_key:48 | nonce:12 | ciphertext+tag
Format 1 (written before values had versions) binds project, secret and name; it
opens only as version 1. Format 2 binds the version too. New values are format 2.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import secrets
import string
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from service.ids import random_bytes

FORMAT_VERSION = 2
_FORMATS = (1, 2)
_NONCE = 12
_WRAPPED_KEY = 32 + 16
_KEY_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_API_KEY_ALPHABET = string.ascii_letters + string.digits
API_KEY_PREFIX = "sk-lw-"


class DecryptionError(Exception):
    """A sealed value could not be opened: wrong key, wrong row or tampered bytes."""


class Keyring:
    """Master keys by id; the first one seals, every one of them opens."""

    __slots__ = ("_keys", "primary_id")

    def __init__(self, keys: dict[str, AESGCM], primary_id: str) -> None:
        self._keys = keys
        self.primary_id = primary_id

    def __repr__(self) -> str:
        return f"Keyring(key_ids={list(self._keys)!r})"

    @classmethod
    def parse(cls, entries: str) -> Keyring:
        """Keys from `key_id:base64key` entries, comma separated; ValueError names the entry, never the key."""
        keys: dict[str, AESGCM] = {}
        primary_id = ""
        for entry in entries.split(","):
            key_id, sep, encoded = entry.strip().partition(":")
            if not sep or not _KEY_ID.fullmatch(key_id):
                raise ValueError("entries must look like key_id:base64key")
            try:
                raw = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                raise ValueError(f"entry {key_id!r} is not valid base64") from None
            if len(raw) != 32:
                raise ValueError(f"entry {key_id!r} must decode to 32 bytes")
            if key_id in keys:
                raise ValueError(f"names {key_id!r} twice")
            keys[key_id] = AESGCM(raw)
            primary_id = primary_id or key_id
        return cls(keys, primary_id)

    @property
    def key_ids(self) -> list[str]:
        return list(self._keys)

    def _key(self, key_id: str) -> AESGCM:
        try:
            return self._keys[key_id]
        except KeyError:
            raise DecryptionError(f"unknown master key id {key_id!r}") from None


def generate_master_key_entry(key_id: str) -> str:
    """A new `key_id:base64key` entry for SECRETS_MASTER_KEYS."""
    if not _KEY_ID.fullmatch(key_id):
        raise ValueError("key id must be 1-64 of A-Z a-z 0-9 _ . -")
    return f"{key_id}:{base64.b64encode(os.urandom(32)).decode()}"


@dataclass(frozen=True, slots=True)
class Binding:
    """What a sealed value is bound to: one version of one secret's value, in one project."""

    project_id: str
    secret_id: str
    name: str
    version: int

    def associated_data(self, format_version: int) -> bytes:
        if format_version == 1:
            return f"secret/v1\x00{self.project_id}\x00{self.secret_id}\x00{self.name}".encode()
        return f"secret/v2\x00{self.project_id}\x00{self.secret_id}\x00{self.name}\x00{self.version}".encode()


def seal(keyring: Keyring, plaintext: str, binding: Binding) -> bytes:
    """The value sealed under a fresh data key, wrapped by the primary master key (format 2)."""
    randomness = random_bytes(32 + 2 * _NONCE)
    data_key, nonce, wrap_nonce = randomness[:32], randomness[32:44], randomness[44:]
    format_byte = bytes((FORMAT_VERSION,))
    aad = binding.associated_data(FORMAT_VERSION)
    ciphertext = AESGCM(data_key).encrypt(nonce, plaintext.encode(), format_byte + aad)
    return _wrap(keyring, FORMAT_VERSION, data_key, aad, wrap_nonce) + nonce + ciphertext


def unseal(keyring: Keyring, blob: bytes, binding: Binding) -> str:
    """The plaintext; DecryptionError for a wrong key or row, a tampered or malformed blob."""
    format_version = _format(blob, binding)
    aad = binding.associated_data(format_version)
    data_key, body = _unwrap(keyring, blob, aad)
    if len(body) < _NONCE + 16:
        raise DecryptionError("sealed value is truncated")
    try:
        plaintext = AESGCM(data_key).decrypt(body[:_NONCE], body[_NONCE:], bytes((format_version,)) + aad)
        return plaintext.decode()
    except (InvalidTag, ValueError):
        raise DecryptionError("sealed value does not open with this key and row") from None


def rewrap(keyring: Keyring, blob: bytes, binding: Binding) -> bytes:
    """The same sealed value (same format) with its data key wrapped by the primary master key."""
    format_version = _format(blob, binding)
    aad = binding.associated_data(format_version)
    data_key, body = _unwrap(keyring, blob, aad)
    return _wrap(keyring, format_version, data_key, aad, os.urandom(_NONCE)) + body


def sealed_key_id(blob: bytes) -> str:
    """The id of the master key that wraps a sealed value's data key."""
    if len(blob) < 2 or blob[0] not in _FORMATS or len(blob) < 2 + blob[1]:
        raise DecryptionError("unsupported or malformed sealed format")
    try:
        return blob[2 : 2 + blob[1]].decode("ascii")
    except UnicodeDecodeError:
        raise DecryptionError("malformed key id in sealed value") from None


def _format(blob: bytes, binding: Binding) -> int:
    sealed_key_id(blob)
    if blob[0] == 1 and binding.version != 1:
        raise DecryptionError("a format-1 sealed value is only ever version 1")
    return blob[0]


def _wrap(keyring: Keyring, format_version: int, data_key: bytes, aad: bytes, wrap_nonce: bytes) -> bytes:
    kid = keyring.primary_id.encode()
    header = bytes((format_version, len(kid))) + kid
    return header + wrap_nonce + keyring._key(keyring.primary_id).encrypt(wrap_nonce, data_key, header + aad)


def _unwrap(keyring: Keyring, blob: bytes, aad: bytes) -> tuple[bytes, bytes]:
    key_id = sealed_key_id(blob)
    offset = 2 + blob[1]
    header = blob[:offset]
    wrap_nonce = blob[offset : offset + _NONCE]
    wrapped = blob[offset + _NONCE : offset + _NONCE + _WRAPPED_KEY]
    if len(wrapped) != _WRAPPED_KEY:
        raise DecryptionError("sealed value is truncated")
    try:
        data_key = keyring._key(key_id).decrypt(wrap_nonce, wrapped, header + aad)
    except InvalidTag:
        raise DecryptionError("sealed value does not open with this key and row") from None
    return data_key, blob[offset + _NONCE + _WRAPPED_KEY :]


def generate_api_key() -> str:
    """A project API key: sk-lw- and 48 alphanumerics from the OS CSPRNG."""
    return API_KEY_PREFIX + "".join(secrets.choice(_API_KEY_ALPHABET) for _ in range(48))


def hash_api_key(hash_key: bytes, api_key: str) -> str:
    """The keyed hash stored in place of the key."""
    return ApiKeyHasher(hash_key)(api_key)


class ApiKeyHasher:
    """The keyed hash of API keys under one hash key, for every request: the HMAC keyed once and
    copied per key (a copy costs under half a one-shot HMAC, which sets up the key and the digest)."""

    __slots__ = ("_keyed",)

    def __init__(self, hash_key: bytes) -> None:
        self._keyed = hmac.new(hash_key, digestmod=hashlib.sha256)

    def __repr__(self) -> str:
        return "ApiKeyHasher()"

    def __call__(self, api_key: str) -> str:
        mac = self._keyed.copy()
        mac.update(api_key.encode())
        return mac.hexdigest()


def derive_key(key: bytes, purpose: str) -> bytes:
    """A 256-bit key of its own for `purpose`, derived from `key` (HKDF-SHA256): one secret, many uses, no reuse."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose.encode()).derive(key)


def keyed_fingerprint(hash_key: bytes, *parts: bytes) -> str:
    """A keyed digest of request parts: comparable, yet reveals nothing of them."""
    mac = hmac.new(hash_key, b"fingerprint/v1", hashlib.sha256)
    for part in parts:
        mac.update(len(part).to_bytes(8, "big"))
        mac.update(part)
    return mac.hexdigest()
