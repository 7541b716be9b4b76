"""tiergate in front of another tiergate: the inner gateway's model tuple carries through."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.conftest import GatewayFactory, ServerProcess, upstream_model

PIN = "ab" * 32


@pytest.fixture(scope="module")
def chain(gateway_factory: GatewayFactory, upstream: ServerProcess) -> ServerProcess:
    inner = gateway_factory({"models.inner-echo": upstream_model(
        upstream, "echo", weights_sha256=PIN, quantization={"method": "int8-dynamic", "bits": 8})})
    return gateway_factory({"models.outer": {"backend": "http", "base_url": inner.url + "/v1"}})


def test_outer_gateway_learns_the_inner_tuple(chain: ServerProcess) -> None:
    card = httpx.get(chain.url + "/v1/models/outer").json()["tiergate"]
    assert card["engine"] == "tiergate"
    assert card["engine_version"] == "0.1.0"
    assert card["upstream_model"] == "inner-echo"  # the first model the inner gateway lists
    assert card["base_weights_sha256"] == PIN
    assert card["quantization"]["method"] == "int8-dynamic"


def test_requests_flow_through_both_gateways(chain: ServerProcess) -> None:
    c = openai.OpenAI(base_url=chain.url + "/v1", api_key="x", max_retries=0)
    raw = c.chat.completions.with_raw_response.create(
        model="outer", messages=[{"role": "user", "content": "through"}], seed=7, temperature=1)
    assert raw.parse().choices[0].message.content == "echo: through"
    assert raw.parse().model == "outer"
    assert raw.headers["x-tiergate-seed"] == "7"
    stream = c.chat.completions.create(
        model="outer", messages=[{"role": "user", "content": "through"}], stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == \
        "echo: through"
    usage = next(ch.usage for ch in chunks if ch.usage)
    assert usage.completion_tokens > 0
    assert sum(1 for ch in chunks if ch.usage) == 1
