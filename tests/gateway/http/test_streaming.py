"""Streams end cleanly only when the answer did; a vanished client ends the upstream call."""

from __future__ import annotations

import itertools
import json
import signal
import time

import httpx
import pytest

from tests.conftest import GatewayFactory, ServerProcess, upstream_model


def open_streams(upstream: ServerProcess) -> int:
    count: int = httpx.get(upstream.url + "/stats").json()["open_streams"]
    return count


def test_client_disconnect_cancels_the_upstream_stream(gateway: ServerProcess,
                                                       upstream: ServerProcess) -> None:
    body = {"model": "stall", "stream": True, "messages": [{"role": "user", "content": "x" * 40}]}
    before = open_streams(upstream)
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body,
                      timeout=10) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
        assert open_streams(upstream) == before + 1
    # The client is gone: the gateway must close its upstream connection, and the upstream's
    # handler must end long before the 20 stalled chunks (10 s) would have.
    deadline = time.monotonic() + 5
    while open_streams(upstream) > before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert open_streams(upstream) == before


def test_gateway_keeps_serving_after_disconnects(gateway: ServerProcess) -> None:
    body = {"model": "stall", "stream": True, "messages": [{"role": "user", "content": "y"}]}
    for _ in range(5):
        with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body,
                          timeout=10) as response:
            next(response.iter_lines())
    ok = httpx.post(gateway.url + "/v1/chat/completions", timeout=10, json={
        "model": "echo", "messages": [{"role": "user", "content": "still here"}]})
    assert ok.json()["choices"][0]["message"]["content"] == "echo: still here"


def test_graceful_shutdown_drains_in_flight_streams(gateway_factory: GatewayFactory,
                                                    upstream: ServerProcess) -> None:
    gateway = gateway_factory({"models.stall": upstream_model(upstream, "stall-500"),
                               "server": {"graceful_shutdown_s": 20}})
    body = {"model": "stall", "stream": True, "messages": [{"role": "user", "content": "drain"}]}
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body,
                      timeout=30) as response:
        lines = response.iter_lines()
        first = next(lines)
        gateway.process.send_signal(signal.SIGTERM)  # mid-stream: ~5 s of answer still to come
        time.sleep(0.5)
        with pytest.raises(httpx.ConnectError):  # no new work is accepted while draining
            httpx.get(gateway.url + "/health", timeout=2)
        rest = [line for line in lines if line]
    assert first.startswith("data: ")
    assert rest[-1] == "data: [DONE]"
    text = "".join(httpx.Response(200, content=line[6:]).json()["choices"][0]["delta"]
                   .get("content", "") for line in [first, *rest[:-1]])
    assert text == "echo: drain"
    gateway.process.wait(10)
    assert "Application shutdown complete" in gateway.logs()


def test_paced_upstream_sends_one_chunk_per_interval(upstream: ServerProcess) -> None:
    """``paced-MS`` (the overhead benchmark's token-rate stream): the first chunk at once, then
    one chunk at a time, each at least MS ms after the one before."""
    body = {"model": "paced-50", "stream": True,
            "messages": [{"role": "user", "content": "abcdefg"}]}  # "echo: abcdefg": 13 chunks
    arrivals: list[float] = []
    pieces: list[str] = []
    with httpx.stream("POST", upstream.url + "/v1/chat/completions", json=body,
                      timeout=10) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: {"):
                arrivals.append(time.monotonic())
                pieces.append(json.loads(line[6:])["choices"][0]["delta"]["content"])
    assert "".join(pieces) == "echo: abcdefg"
    assert len(pieces) == 13
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    assert min(gaps) >= 0.045  # never two chunks together: each waits its interval
