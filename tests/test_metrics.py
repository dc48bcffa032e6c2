"""GET /metrics: what an operator watches, in the Prometheus text format, with no secret in any label."""

from __future__ import annotations

import asyncio
import urllib.request

import httpx
from prometheus_client.parser import text_string_to_metric_families

from service import metrics
from service.settings import Settings
from tests.support.app import auth, created, make_env, make_project, serving
from tests.support.database import execute, query
from tests.support.leaks import CANARY, leaked
from tests.support.ports import free_port
from tests.support.publisher import InMemoryPublisher
from tests.support.waiting import poll_until


def sample(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


async def test_metrics_count_requests_commits_and_faults_by_template_never_by_secret(
    settings: Settings, project: dict[str, str]
) -> None:
    route = "/api/secrets/by-name/{name}/value"
    reads_before = sample("secrets_http_requests_total", route=route, method="GET", status="200")
    commits_before = sample("secrets_db_commit_batch_jobs_count")
    faults_before = sample("secrets_decryption_failures_total")
    publisher = InMemoryPublisher()
    async with serving(settings, publisher=publisher) as client:
        secret = await created(client, project, "METRIC_CANARY_NAME", CANARY)
        for _ in range(3):
            assert (
                await client.get("/api/secrets/by-name/METRIC_CANARY_NAME/value", headers=auth(project))
            ).status_code == 200
        sealed = bytes(
            (await query(settings, "SELECT sealed_value FROM secrets WHERE id = ?", secret["id"]))[0][0]
        )
        await execute(
            settings, "UPDATE secrets SET sealed_value = ? WHERE id = ?", sealed[:-1] + b"\x00", secret["id"]
        )
        assert (
            await client.get("/api/secrets/by-name/METRIC_CANARY_NAME/value", headers=auth(project))
        ).status_code == 500
        await poll_until(lambda: len(publisher.published) >= 4, 10, interval=0.05, what="the events")
        await poll_until(lambda: sample("secrets_relay_published_events_total") >= 4, 10, interval=0.05)
        response = await client.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    text = response.text
    families = {family.name: family for family in text_string_to_metric_families(text)}
    assert {
        "secrets_http_requests",
        "secrets_http_request_duration_seconds",
        "secrets_db_commit_batch_jobs",
        "secrets_db_commit_duration_seconds",
        "secrets_outbox_pending_events",
        "secrets_outbox_oldest_pending_age_seconds",
        "secrets_relay_published_events",
        "secrets_relay_publish_failures",
        "secrets_relay_leader",
        "secrets_rate_limited_requests",
        "secrets_decryption_failures",
    } <= set(families)
    assert sample("secrets_http_requests_total", route=route, method="GET", status="200") - reads_before == 3
    assert sample("secrets_http_requests_total", route=route, method="GET", status="500") >= 1
    assert sample("secrets_db_commit_batch_jobs_count") - commits_before >= 5
    assert sample("secrets_decryption_failures_total") - faults_before == 1
    assert sample("secrets_relay_leader") == 1
    # Labels are templates: no secret name, value or key anywhere in the exposition.
    assert "METRIC_CANARY_NAME" not in text
    assert not leaked(CANARY, text) and not leaked(project["apiKey"], text)


async def test_metrics_can_have_a_port_of_their_own(database_url: str) -> None:
    port = free_port()
    settings = Settings.from_env(make_env(database_url, METRICS_PORT=str(port)))
    project = await make_project(settings, "p")
    async with serving(settings) as client:
        await created(client, project, "ANY", "v")
        assert (await client.get("/metrics")).status_code == 404, "not on the service's port"
        body = await asyncio.to_thread(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        )
    assert "secrets_http_requests_total" in body
    with httpx.Client() as http:
        try:
            http.get(f"http://127.0.0.1:{port}/metrics", timeout=2)
            stopped = False
        except httpx.TransportError:
            stopped = True
    assert stopped, "the metrics server outlived the app"
