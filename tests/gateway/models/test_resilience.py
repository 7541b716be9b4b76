"""Retries, fallbacks, circuit breakers and in-flight limits against real failing upstreams."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.conftest import GatewayFactory, ServerProcess, upstream_model

CHAT = {"messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def resilient(gateway_factory: GatewayFactory, upstream: ServerProcess,
              dead_url: str) -> ServerProcess:
    return gateway_factory({
        "models.echo": upstream_model(upstream, "echo"),
        "models.flaky": upstream_model(upstream, "status-503", retries=2, retry_backoff_s=0.01,
                                       breaker_failures=100),
        "models.broken": upstream_model(upstream, "status-500", retries=0, breaker_failures=3,
                                        breaker_reset_s=1.0),
        "models.down-small": {"backend": "http", "base_url": dead_url, "upstream_model": "x",
                              "retries": 1, "retry_backoff_s": 0.01, "fallbacks": ["echo"]},
        "models.narrow": upstream_model(upstream, "stall-500", max_in_flight=1),
    })


def upstream_requests(upstream: ServerProcess) -> int:
    count: int = httpx.get(upstream.url + "/stats").json()["requests"]
    return count


def chat(gateway: ServerProcess, model: str, **extra: object) -> httpx.Response:
    return httpx.post(gateway.url + "/v1/chat/completions", timeout=10,
                      json={"model": model, **CHAT, **extra})


def test_retries_within_budget(resilient: ServerProcess, upstream: ServerProcess) -> None:
    before = upstream_requests(upstream)
    response = chat(resilient, "flaky")
    assert response.status_code == 503 and int(response.headers["retry-after"]) >= 1
    assert upstream_requests(upstream) - before == 3  # the call and its 2 retries


def test_fallback_along_the_chain(resilient: ServerProcess) -> None:
    response = chat(resilient, "down-small")
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "echo: hi"
    assert response.headers["x-tiergate-model"].startswith("echo@")
    assert response.json()["model"] == "echo"
    with httpx.stream("POST", resilient.url + "/v1/chat/completions", timeout=10, json={
            "model": "down-small", "stream": True, **CHAT}) as stream:
        assert stream.status_code == 200
        assert stream.headers["x-tiergate-model"].startswith("echo@")
        assert [line for line in stream.iter_lines() if line][-1] == "data: [DONE]"


def test_circuit_breaker_opens_fails_fast_and_probes(resilient: ServerProcess,
                                                     upstream: ServerProcess) -> None:
    before = upstream_requests(upstream)
    for _ in range(3):
        assert chat(resilient, "broken").status_code == 502
    assert upstream_requests(upstream) - before == 3
    open_ = chat(resilient, "broken")
    assert open_.status_code == 503
    assert open_.json()["error"]["code"] == "circuit_open"
    assert int(open_.headers["retry-after"]) >= 1
    assert upstream_requests(upstream) - before == 3  # failed fast: never reached the upstream
    health = httpx.get(resilient.url + "/health").json()
    assert health["models"]["broken"]["circuit"] == "open"
    assert health["status"] == "degraded"
    time.sleep(1.1)  # breaker_reset_s: one probe is let through, fails, and re-opens it
    assert chat(resilient, "broken").status_code == 502
    assert upstream_requests(upstream) - before == 4
    assert chat(resilient, "broken").json()["error"]["code"] == "circuit_open"


def test_in_flight_bound_refuses_with_429(resilient: ServerProcess) -> None:
    body = {"model": "narrow", "stream": True, "messages": [{"role": "user", "content": "z"}]}
    with httpx.stream("POST", resilient.url + "/v1/chat/completions", json=body,
                      timeout=10) as holding:
        lines = holding.iter_lines()  # kept: a dropped iterator closes the response
        assert next(lines).startswith("data: ")
        refused = chat(resilient, "narrow")
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "overloaded"
        assert int(refused.headers["retry-after"]) >= 1
        health = httpx.get(resilient.url + "/health").json()["models"]["narrow"]
        assert health["in_flight"] == 1 and health["max_in_flight"] == 1
    deadline = time.monotonic() + 5  # the slot frees once the abandoned stream is closed
    while chat(resilient, "narrow", max_tokens=1).status_code == 429:
        assert time.monotonic() < deadline
        time.sleep(0.1)
