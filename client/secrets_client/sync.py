"""A synchronous wrapper for scripts: the async client on an event loop of its own."""

from __future__ import annotations

import asyncio
import builtins
from typing import Any

from secrets_client.client import SecretsClient
from secrets_client.models import Deleted, Secret, SecretValue, Version


class SyncSecretsClient:
    """`with SyncSecretsClient(base_url, api_key) as client: client.create(...)`; the same calls and
    errors as SecretsClient. Not for use inside a running event loop (use SecretsClient there)."""

    def __init__(self, base_url: str, api_key: str, **options: Any) -> None:
        self._runner = asyncio.Runner()
        self._client = SecretsClient(base_url, api_key, **options)

    def __repr__(self) -> str:
        return f"SyncSecretsClient(base_url={self._client.base_url!r})"

    def __enter__(self) -> SyncSecretsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self._runner.run(self._client.aclose())
        finally:
            self._runner.close()

    def create(self, name: str, value: str, *, idempotency_key: str | None = None) -> Secret:
        return self._runner.run(self._client.create(name, value, idempotency_key=idempotency_key))

    def list(self) -> list[Secret]:
        return self._runner.run(self._client.list())

    def get(self, secret_id: str) -> Secret:
        return self._runner.run(self._client.get(secret_id))

    def update(self, secret_id: str, value: str, if_match: int | str | None = None) -> Secret:
        return self._runner.run(self._client.update(secret_id, value, if_match))

    def delete(self, secret_id: str, if_match: int | str | None = None) -> Deleted:
        return self._runner.run(self._client.delete(secret_id, if_match))

    def versions(self, secret_id: str) -> builtins.list[Version]:
        return self._runner.run(self._client.versions(secret_id))

    def restore(self, secret_id: str, version: int, if_match: int | str | None = None) -> Secret:
        return self._runner.run(self._client.restore(secret_id, version, if_match))

    def read_value(
        self, *, name: str | None = None, id: str | None = None, version: int | None = None
    ) -> SecretValue:
        return self._runner.run(self._client.read_value(name=name, id=id, version=version))

    def store(self, name: str, value: str) -> Secret:
        return self._runner.run(self._client.store(name, value))
