"""A value or an API key never shows in the client's reprs, strings, exceptions or logs."""

from __future__ import annotations

import logging
import traceback

import httpx
import pytest
from secrets_client import InvalidRequestError, SecretsClient, SecretsError, UnavailableError
from secrets_client.kafka import KafkaSettings

from tests.client.conftest import FAST_RETRIES
from tests.support.leaks import CANARY, leaked


def _everything_about(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)) + repr(exc) + str(exc)


async def test_values_and_keys_stay_out_of_reprs_errors_and_logs(
    api: SecretsClient, project: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    api_key = project["apiKey"]
    secret = await api.create("CANARY", CANARY)
    value = await api.read_value(name="CANARY")
    assert value.reveal() == CANARY
    shown = [repr(value), str(value), f"{value}", f"{value!r}", repr(api), repr(secret), str([value])]
    assert not leaked(CANARY, *shown), "a repr or str shows the value"
    assert not leaked(api_key, *shown), "a repr or str shows the API key"

    errors: list[BaseException] = []
    for call in (
        api.create("CANARY", CANARY),  # 409
        api.create("BAD NAME", CANARY),  # 422
        api.update(secret.id, CANARY * 1000),  # 422 (too long)
        api.update("missing", CANARY),  # 404
    ):
        with pytest.raises(SecretsError) as caught:
            await call
        errors.append(caught.value)
    assert any(isinstance(e, InvalidRequestError) for e in errors)
    for exc in errors:
        assert not leaked(CANARY, _everything_about(exc)), f"{type(exc).__name__} shows the value"
        assert not leaked(api_key, _everything_about(exc)), f"{type(exc).__name__} shows the API key"
    await api.store("CANARY", CANARY + "2")
    await api.delete(secret.id)

    assert caplog.records, "nothing was logged at DEBUG: is the capture working?"
    assert not leaked(CANARY, caplog.text), "a log line shows a value"
    assert not leaked(api_key, caplog.text), "a log line shows the API key"


async def test_retries_and_transport_failures_log_no_secret(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    api_key = "sk-lw-" + "K" * 48
    answers = iter(
        [httpx.Response(503, json={"error": "Service Unavailable"}, headers={"Retry-After": "0"})] * 2
    )

    def handle(request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == f"Bearer {api_key}"
        try:
            return next(answers)
        except StopIteration:
            raise httpx.ConnectError("refused", request=request) from None

    async with SecretsClient(
        "http://x", api_key, transport=httpx.MockTransport(handle), retry=FAST_RETRIES
    ) as api:
        with pytest.raises(UnavailableError) as failed:
            await api.create("CANARY", CANARY)
    assert any("retry" in r.getMessage() for r in caplog.records), "retries are not logged"
    for text in (caplog.text, _everything_about(failed.value)):
        assert not leaked(CANARY, text)
        assert not leaked(api_key, text)


def test_the_kafka_password_is_never_shown() -> None:
    settings = KafkaSettings(
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        sasl_username="agent",
        sasl_password=CANARY,
    )
    assert not leaked(CANARY, repr(settings), str(settings), settings.for_logs)
    assert settings.client_options()["sasl_plain_password"] == CANARY
