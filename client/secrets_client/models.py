"""What the service answers, as typed values. A value read never shows its value unless asked."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

MASK = "**********"


def parse_time(text: str) -> datetime:
    """The API's timestamps: ISO 8601, UTC, with a Z."""
    return datetime.fromisoformat(text)


@dataclass(frozen=True, slots=True)
class Secret:
    """A secret's metadata (never its value)."""

    id: str
    project_id: str
    name: str
    created_at: datetime
    updated_at: datetime
    version: int

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Secret:
        return cls(
            id=body["id"],
            project_id=body["projectId"],
            name=body["name"],
            created_at=parse_time(body["createdAt"]),
            updated_at=parse_time(body["updatedAt"]),
            version=int(body.get("version", 1)),
        )


@dataclass(frozen=True, slots=True)
class Version:
    """One kept version of a secret's value (never the value)."""

    version: int
    created_at: datetime

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Version:
        return cls(version=int(body["version"]), created_at=parse_time(body["createdAt"]))


@dataclass(frozen=True, slots=True)
class Deleted:
    """A delete's answer: the secret's id, and the version it had (from the ETag)."""

    id: str
    version: int | None


@dataclass(frozen=True, slots=True)
class SecretValue:
    """One version of a secret's value. `repr`, `str` and formatting show `**********`; `reveal()` gives it."""

    id: str
    name: str
    version: int
    updated_at: datetime
    _value: str = field(repr=False)

    def reveal(self) -> str:
        """The plaintext value, exactly as stored."""
        return self._value

    def __str__(self) -> str:
        return MASK

    def __repr__(self) -> str:
        return (
            f"SecretValue(id={self.id!r}, name={self.name!r}, version={self.version}, "
            f"updated_at={self.updated_at!r}, value={MASK!r})"
        )

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> SecretValue:
        return cls(
            id=body["id"],
            name=body["name"],
            version=int(body["version"]),
            updated_at=parse_time(body["updatedAt"]),
            _value=body["value"],
        )
