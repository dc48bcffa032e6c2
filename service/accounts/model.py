"""Who is calling, and the keys operators issue."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from service.errors import Forbidden

VIEW = "secrets:view"
READ = "secrets:read"
MANAGE = "secrets:manage"
SCOPES = (VIEW, READ, MANAGE)
# What a scope grants: view lists and reads metadata; read adds value reads (for sync
# consumers, which must never write); manage is everything, as in LangWatch.
_GRANTS = {VIEW: {VIEW}, READ: {VIEW, READ}, MANAGE: {VIEW, READ, MANAGE}}


def parse_scopes(text: str) -> frozenset[str]:
    """Scopes as stored (space-separated); unknown words are dropped, never granted."""
    return frozenset(scope for scope in text.split() if scope in _GRANTS)


def format_scopes(scopes: Iterable[str]) -> str:
    return " ".join(sorted(set(scopes)))


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller of a request: a project, through one of its API keys, with that key's scopes."""

    project_id: str
    api_key_id: str
    scopes: frozenset[str] = frozenset(SCOPES)
    _granted: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        granted = {grant for scope in self.scopes for grant in _GRANTS.get(scope, ())}
        object.__setattr__(self, "_granted", frozenset(granted))

    def require(self, scope: str) -> None:
        """Forbidden, naming the scope, unless this key's scopes grant `scope`."""
        if scope not in self._granted:
            raise Forbidden(f"This API key lacks the {scope} scope")


@dataclass(frozen=True, slots=True)
class IssuedKey:
    """A newly issued API key: the only time the key itself is seen."""

    project_id: str
    api_key_id: str
    api_key: str
    scopes: frozenset[str] = frozenset(SCOPES)

    def __repr__(self) -> str:
        return (
            f"IssuedKey(project_id={self.project_id!r}, api_key_id={self.api_key_id!r}, api_key='**********')"
        )

    def to_json(self) -> dict[str, object]:
        return {
            "projectId": self.project_id,
            "apiKeyId": self.api_key_id,
            "apiKey": self.api_key,
            "scopes": sorted(self.scopes),
        }


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """An API key as listed: never the key, nor its hash."""

    api_key_id: str
    scopes: frozenset[str]
    created_at: str
    revoked_at: str | None

    def to_json(self) -> dict[str, object]:
        return {
            "apiKeyId": self.api_key_id,
            "scopes": sorted(self.scopes),
            "createdAt": self.created_at,
            "revokedAt": self.revoked_at,
        }
