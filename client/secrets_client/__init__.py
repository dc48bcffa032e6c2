"""The secrets service's Python client.

    from secrets_client import SecretsClient
    async with SecretsClient("http://127.0.0.1:8000", api_key) as client:
        secret = await client.store("OPENAI_API_KEY", "sk-...")
        value = await client.read_value(name="OPENAI_API_KEY")   # value.reveal() -> "sk-..."

The typed event consumer is `secrets_client.events` and the sync agent `secrets_client.agent`
(both need the `events` extra, which brings aiokafka).
"""

from secrets_client.client import SecretsClient, __version__
from secrets_client.errors import (
    ConflictError,
    ForbiddenError,
    GoneError,
    InvalidRequestError,
    NotFoundError,
    PreconditionFailedError,
    QuotaExceededError,
    RateLimitedError,
    SecretsError,
    ServerError,
    UnauthorizedError,
    UnavailableError,
)
from secrets_client.models import Deleted, Secret, SecretValue, Version
from secrets_client.retry import NO_RETRIES, RetryPolicy
from secrets_client.sync import SyncSecretsClient

__all__ = [
    "NO_RETRIES",
    "ConflictError",
    "Deleted",
    "ForbiddenError",
    "GoneError",
    "InvalidRequestError",
    "NotFoundError",
    "PreconditionFailedError",
    "QuotaExceededError",
    "RateLimitedError",
    "RetryPolicy",
    "Secret",
    "SecretValue",
    "SecretsClient",
    "SecretsError",
    "ServerError",
    "SyncSecretsClient",
    "UnauthorizedError",
    "UnavailableError",
    "Version",
    "__version__",
]
