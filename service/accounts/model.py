"""Who is calling, and the keys operators issue."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller of a request: a project, through one of its API keys."""

    project_id: str
    api_key_id: str


@dataclass(frozen=True, slots=True)
class IssuedKey:
    """A newly issued API key: the only time the key itself is seen."""

    project_id: str
    api_key_id: str
    api_key: str

    def __repr__(self) -> str:
        return (
            f"IssuedKey(project_id={self.project_id!r}, api_key_id={self.api_key_id!r}, api_key='**********')"
        )

    def to_json(self) -> dict[str, str]:
        return {"projectId": self.project_id, "apiKeyId": self.api_key_id, "apiKey": self.api_key}
