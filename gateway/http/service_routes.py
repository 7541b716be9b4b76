"""The gateway's own public routes: ``/health``, ``/metrics`` and ``/openapi.json``."""

from __future__ import annotations

from gateway.http.exchange import Call, Reply, json_reply
from gateway.http.frontdoor import Endpoint

PROMETHEUS = b"text/plain; version=0.0.4; charset=utf-8"


async def health(call: Call) -> Reply:
    models = await call.gateway.registry.health()
    status = "ok" if all(m.get("status") == "ok" for m in models.values()) else "degraded"
    return json_reply({"status": status, "models": models})


async def metrics(call: Call) -> Reply:
    return Reply(call.gateway.telemetry.prometheus_text(), media_type=PROMETHEUS)


async def openapi(call: Call) -> Reply:
    return json_reply(call.gateway.openapi)


ENDPOINTS = [
    Endpoint("/health", "GET", health, access="public"),
    Endpoint("/metrics", "GET", metrics, access="public"),
    Endpoint("/openapi.json", "GET", openapi, access="public"),
]
