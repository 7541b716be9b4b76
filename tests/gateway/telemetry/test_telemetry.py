"""Metrics at /metrics, traceparent propagation and OTLP export, on real processes."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.conftest import GatewayFactory, ServerProcess, upstream_model

CHAT = {"messages": [{"role": "user", "content": "hi"}]}
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of ``name`` whose labels include ``labels``."""
    for line in text.splitlines():
        match = re.match(rf"^{name}\{{(.*)\}} (\S+)$", line)
        if match and all(f'{k}="{v}"' in match.group(1) for k, v in labels.items()):
            return float(match.group(2))
    raise AssertionError(f"no sample {name} {labels} in /metrics")


@pytest.fixture(scope="module")
def traced(gateway_factory: GatewayFactory, upstream: ServerProcess) -> ServerProcess:
    return gateway_factory({
        "models.echo": upstream_model(upstream, "echo"),
        "models.bad": upstream_model(upstream, "status-500", retries=0),
        "telemetry": {"otlp_endpoint": upstream.url},
    })


def test_metrics_count_requests_tokens_and_state(traced: ServerProcess) -> None:
    for _ in range(3):
        httpx.post(traced.url + "/v1/chat/completions", json={"model": "echo", **CHAT})
    with httpx.stream("POST", traced.url + "/v1/chat/completions",
                      json={"model": "echo", "stream": True, **CHAT}) as response:
        list(response.iter_lines())
    httpx.post(traced.url + "/v1/chat/completions", json={"model": "bad", **CHAT})
    response = httpx.get(traced.url + "/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert metric(text, "tiergate_requests_total", model="echo", status="200") == 4
    assert metric(text, "tiergate_requests_total", model="bad", status="502") == 1
    assert metric(text, "tiergate_request_duration_seconds_count", model="echo",
                  status="200") == 4
    assert metric(text, "tiergate_time_to_first_token_seconds_count", model="echo") == 1
    assert metric(text, "tiergate_tokens_total", model="echo", direction="out") > 0
    assert metric(text, "tiergate_in_flight", model="echo") == 0
    assert metric(text, "tiergate_circuit_state", model="bad") == 0


def test_traceparent_continues_the_clients_trace_upstream(traced: ServerProcess,
                                                          upstream: ServerProcess) -> None:
    parent = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
    httpx.post(traced.url + "/v1/chat/completions", json={"model": "echo", **CHAT},
               headers={"traceparent": parent})
    headers = {k.lower(): v for k, v in httpx.get(upstream.url + "/last").json()
               ["headers"].items()}
    _, trace_id, span_id, _ = headers["traceparent"].split("-")
    assert trace_id == TRACE_ID  # the same trace, continued
    assert span_id != "00f067aa0ba902b7"  # from the gateway's own backend span


def test_spans_are_exported_over_otlp(gateway_factory: GatewayFactory,
                                      upstream: ServerProcess) -> None:
    gateway = gateway_factory({"models.echo": upstream_model(upstream, "echo"),
                               "telemetry": {"otlp_endpoint": upstream.url}})
    before = len(httpx.get(upstream.url + "/stats").json()["trace_exports"])
    httpx.post(gateway.url + "/v1/chat/completions", json={"model": "echo", **CHAT},
               headers={"traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01"})
    gateway.stop()  # SIGTERM: a graceful shutdown, which flushes the batch
    assert "Application shutdown complete" in gateway.logs()
    exports = httpx.get(upstream.url + "/stats").json()["trace_exports"][before:]
    assert exports
    body = bytes.fromhex(exports[-1])
    assert bytes.fromhex(TRACE_ID) in body
    assert b"tiergate.backend" in body and b"POST /v1/chat/completions" in body


def test_label_values_are_configured_names_or_unknown() -> None:
    from gateway.telemetry.instruments import UNKNOWN, Telemetry, clip
    from gateway.telemetry.settings import TelemetrySettings

    telemetry = Telemetry(TelemetrySettings(tracing=False), names=["echo", "auto"])
    telemetry.observe_request("auto", "echo", 200, 0.01, 0.005, 3, 4)
    for i in range(1000):
        telemetry.observe_request(f"made-up-{i}", f"made-up-{i}", 404, 0.001, None, 0, 0)
    assert set(telemetry.requests.values) == {("auto", "echo", "200"),
                                              (UNKNOWN, UNKNOWN, "404")}
    assert telemetry.requests.values[(UNKNOWN, UNKNOWN, "404")] == 1000
    assert len(telemetry.duration.series) == 2
    text = telemetry.prometheus_text()
    assert b"made-up" not in text and len(text) < 10_000
    assert clip("x" * 10) == "x" * 10
    assert clip("x" * 1_000_000) == "x" * 200 + "… (1000000 characters)"
