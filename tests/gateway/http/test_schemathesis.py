"""The published ``/openapi.json`` states the rules the gateway enforces: checked with
schemathesis against a live gateway on loopback (bounded: a fixed seed, a few dozen examples per
operation, well under 90 s), and directly with jsonschema for the rules that matter most."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from tests.conftest import GatewayFactory, ServerProcess, upstream_model

pytest.importorskip("schemathesis")

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
HOOKS = Path(__file__).with_name("schemathesis_hooks.py")
CHAT = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def gateway(gateway_factory: GatewayFactory, upstream: ServerProcess) -> ServerProcess:
    return gateway_factory({"models.echo": upstream_model(upstream, "echo")})


@pytest.fixture(scope="module")
def document(gateway: ServerProcess) -> dict[str, Any]:
    published: dict[str, Any] = httpx.get(gateway.url + "/openapi.json").json()
    return published


def keywords(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = set(node)
        for value in node.values():
            found |= keywords(value)
        return found
    if isinstance(node, list):
        return set().union(*(keywords(value) for value in node)) if node else set()
    return set()


def test_the_document_states_the_limits_in_json_schema(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    for schema in schemas.values():
        jsonschema.Draft202012Validator.check_schema(schema)
    # pydantic writes a bound it cannot place as "ge"/"le": JSON Schema would ignore it.
    assert not keywords(schemas) & {"ge", "le", "gt", "lt"}
    chat = schemas["ChatCompletionRequest"]["properties"]
    assert chat["model"]["maxLength"] == 256 and chat["messages"]["maxItems"] == 4096
    assert "64 levels" in document["info"]["description"]


@pytest.mark.parametrize(("change", "accepted"), [
    ({}, True),
    ({"temperature": None, "seed": 3.0, "custom": {"x": [1.5, -(2**63)]}}, True),
    ({"logprobs": "yes"}, False),
    ({"n": "2"}, False),
    ({"stream_options": {"include_usage": True}}, False),
    ({"top_logprobs": 2}, False),
    ({"messages": [{"role": "user", "content": None}]}, False),
    ({"messages": [{"role": "user", "content": [{"text": "no type"}]}]}, False),
    ({"stop": ["ok", ""]}, False),
    ({"custom": {"x": 2**64}}, False),
    ({"model": "m" * 257}, False),
])
def test_the_schema_and_the_gateway_agree(gateway: ServerProcess, document: dict[str, Any],
                                          change: dict[str, Any], accepted: bool) -> None:
    body = {**CHAT, **change}
    validator = jsonschema.Draft202012Validator({
        "$ref": "#/components/schemas/ChatCompletionRequest",
        "components": document["components"]})
    assert validator.is_valid(body) == accepted
    response = httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=30)
    assert (response.status_code == 200) == accepted, response.text


def test_schemathesis_finds_no_server_error_and_no_rule_the_schema_misstates(
        gateway: ServerProcess, tmp_path: Path) -> None:
    """Every check schemathesis has (no 5xx; statuses, content types and error bodies as
    documented; schema-valid requests accepted, schema-violating ones refused), over requests
    generated from the published document: its coverage phase (boundaries, each violation)
    and fuzzing."""
    har = tmp_path / "run.har"
    command = [str(SCHEMATHESIS), "run", gateway.url + "/openapi.json", "--checks", "all",
               "--max-examples", "30", "--seed", "1", "--workers", "2",
               "--request-timeout", "20", "--generation-database", "none", "--no-color",
               "--report", "har", "--report-har-path", str(har)]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=150,
                            env={**os.environ, "SCHEMATHESIS_HOOKS": str(HOOKS)})
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
    entries = json.loads(har.read_text())["log"]["entries"]
    statuses = Counter(entry["response"]["status"] for entry in entries)
    assert len(entries) >= 300, statuses
    assert not [status for status in statuses if status >= 500], statuses
    assert statuses[200] >= 10 and statuses[400] >= 100, statuses  # both sides were reached
    for entry in entries:
        response = entry["response"]
        if response["status"] >= 400 and entry["request"]["method"] != "HEAD":
            assert response["content"]["mimeType"] == "application/json", entry["request"]
            error = json.loads(response["content"]["text"])["error"]
            assert set(error) == {"message", "type", "param", "code"}
            assert isinstance(error["message"], str) and error["message"]
