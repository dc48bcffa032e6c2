"""The service's metrics, in the Prometheus text format (prometheus-client).

One registry per process, shared by every room that counts something. Labels are
route templates, methods, statuses and states: never a secret's name, a value or a
key (a by-name route is labelled by its template, /api/secrets/by-name/{name}/value).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

REGISTRY = CollectorRegistry()
CONTENT_TYPE = CONTENT_TYPE_LATEST

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

REQUESTS = Counter(
    "secrets_http_requests_total", "HTTP requests answered, by route template, method and status.",
    ["route", "method", "status"], registry=REGISTRY,
)  # fmt: skip
REQUEST_SECONDS = Histogram(
    "secrets_http_request_duration_seconds", "Time from a request's arrival to its answer's last byte.",
    ["route", "method"], buckets=_LATENCY, registry=REGISTRY,
)  # fmt: skip
RATE_LIMITED = Counter(
    "secrets_rate_limited_requests_total", "Requests refused with 429 by the per-key rate limits, by limit.",
    ["limit"], registry=REGISTRY,
)  # fmt: skip
COMMIT_BATCH = Histogram(
    "secrets_db_commit_batch_jobs", "Write jobs committed together in one transaction (group commit).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=REGISTRY,
)  # fmt: skip
COMMIT_SECONDS = Histogram(
    "secrets_db_commit_duration_seconds", "Time to run and commit one batch of write jobs.",
    buckets=_LATENCY, registry=REGISTRY,
)  # fmt: skip
STORAGE_FULL = Gauge(
    "secrets_db_storage_full",
    "1 while the database's storage is full (writes answer 503).",
    registry=REGISTRY,
)
OUTBOX_PENDING = Gauge(
    "secrets_outbox_pending_events", "Committed events not yet published (as last counted by the relay).",
    registry=REGISTRY,
)  # fmt: skip
OUTBOX_OLDEST_SECONDS = Gauge(
    "secrets_outbox_oldest_pending_age_seconds", "Age of the oldest committed event not yet published.",
    registry=REGISTRY,
)  # fmt: skip
PUBLISHED = Counter(
    "secrets_relay_published_events_total",
    "Events the relay published (acknowledged by Kafka).",
    registry=REGISTRY,
)
PUBLISH_FAILURES = Counter(
    "secrets_relay_publish_failures_total", "Relay rounds that failed to publish (the events stay pending).",
    registry=REGISTRY,
)  # fmt: skip
RELAY_LEADER = Gauge(
    "secrets_relay_leader", "1 while this process holds the relay lease and publishes; 0 on a standby.",
    registry=REGISTRY,
)  # fmt: skip
DECRYPTION_FAILURES = Counter(
    "secrets_decryption_failures_total",
    "Stored values that did not open (a platform fault).",
    registry=REGISTRY,
)


def exposition() -> bytes:
    """Every metric, in the Prometheus text format."""
    return generate_latest(REGISTRY)
