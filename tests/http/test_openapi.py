"""GET /openapi.json: the create route is LangWatch's contract, and every route is described."""

from __future__ import annotations

import copy

import httpx
import pytest
import yaml

from tests.support.paths import ROOT

CONTRACT = ROOT / "tests" / "contract" / "create-secret.openapi.yaml"
SHARED_CONTRACT = ROOT.parent / "shared" / "contract" / "create-secret.openapi.yaml"


def _contract() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load(CONTRACT.read_text())


def test_vendored_contract_is_the_shared_one() -> None:
    if not SHARED_CONTRACT.exists():
        pytest.skip("no ../shared beside this checkout")
    assert CONTRACT.read_bytes() == SHARED_CONTRACT.read_bytes()


@pytest.mark.asyncio
async def test_create_operation_is_the_contract_plus_what_the_readme_lists(client: httpx.AsyncClient) -> None:
    """LangWatch's POST /api/secrets, with the additions the README names and nothing else:
    the 255-character name limit, `version` in the metadata, and more answers (403, 413, 429, 503)."""
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    served = response.json()
    contract = _contract()
    ours = copy.deepcopy(served["paths"]["/api/secrets"]["post"])
    theirs = contract["paths"]["/api/secrets"]["post"]

    name = ours["requestBody"]["content"]["application/json"]["schema"]["properties"]["name"]
    assert name.pop("maxLength") == 255
    assert ours["requestBody"]["content"] == theirs["requestBody"]["content"]
    for status, response_spec in theirs["responses"].items():
        assert status in ours["responses"], status
        content = ours["responses"][status]["content"]
        properties = content["application/json"]["schema"].get("properties", {})
        if status == "201":
            assert properties.pop("version")["type"] == "integer"
        assert content == response_spec["content"], status
    assert set(ours["responses"]) - set(theirs["responses"]) == {"403", "413", "429", "503"}
    assert served["components"]["securitySchemes"]["project_api_key"]["name"] == "X-Auth-Token"
    assert served["security"] == contract["security"]


async def test_every_route_is_described(client: httpx.AsyncClient) -> None:
    from service.http.routes import routes

    served = (await client.get("/openapi.json")).json()
    described = {path: set(ops) - {"parameters"} for path, ops in served["paths"].items()}
    for route in routes:
        if route.path == "/openapi.json":
            continue
        methods = {m.lower() for m in (route.methods or set())} - {"head"}
        assert methods <= described.get(route.path, set()), route.path


def test_contract_path_is_what_fuzz_uses() -> None:
    assert "tests/contract/create-secret.openapi.yaml" in (ROOT / "scripts" / "fuzz").read_text()
