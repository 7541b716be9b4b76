"""The gateway's own public routes: health, metrics and the OpenAPI document.

- ``GET /livez`` — the process serves: always ``200`` (a liveness probe: restart when it fails);
- ``GET /readyz`` — ``200`` when the gateway can serve, else ``503`` with the reasons (models
  that are not ``deferred`` loading or failed to load, no model reachable, every circuit open,
  the record spool failing or over its limit): a readiness probe;
- ``GET /health`` — the same verdict (``200`` / ``503``) with each model's state and the tuple
  registry's stale and refused models (:mod:`gateway.governance`). Upstream
  details (URLs, errors) and the record store's state are shown only to a caller with an admin
  key (``Authorization: Bearer <admin key>``); anyone else gets the public fields.
"""

from __future__ import annotations

from typing import Any

from gateway.http.auth import authenticate_admin
from gateway.http.exchange import Call, Reply, json_reply
from gateway.http.frontdoor import Endpoint
from gateway.kernel.errors import TiergateError

PROMETHEUS = b"text/plain; version=0.0.4; charset=utf-8"

PUBLIC_MODEL_FIELDS = frozenset({
    "status", "step", "reachable", "circuit", "in_flight", "max_in_flight", "decoding",
    "waiting", "peak_decoding", "max_batch", "tokens_generated"})
"""What anyone sees of a model's health; the rest (upstream URL, errors) is for admins."""


def _is_admin(call: Call) -> bool:
    """Whether the caller sent an admin key (a missing or wrong one: the public view)."""
    authorization = call.header(b"authorization")
    if authorization is None:
        return False
    try:
        call.caller = authenticate_admin(call.gateway.settings.auth.admin_keys, authorization)
    except TiergateError:
        return False
    return True


def _add_admin_details(call: Call, body: dict[str, Any], models: dict[str, Any]) -> bool:
    """Each model's whole health and the records' state, for an admin; whether it was one."""
    if not _is_admin(call):
        return False
    body["models"] = models
    if call.gateway.recorder is not None:
        body["records"] = call.gateway.recorder.health()
    body["governance"] = call.gateway.tuples.summary()
    return True


def _public(health: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in health.items() if k in PUBLIC_MODEL_FIELDS}


async def livez(call: Call) -> Reply:
    return json_reply({"status": "ok"})


async def readyz(call: Call) -> Reply:
    reasons, models = await call.gateway.readiness()
    body: dict[str, Any] = {"status": "unavailable" if reasons else "ready", "reasons": reasons}
    _add_admin_details(call, body, models)
    return json_reply(body, status=503 if reasons else 200)


async def health(call: Call) -> Reply:
    reasons, models = await call.gateway.readiness()
    if reasons:
        status = "unavailable"
    else:
        status = "ok" if all(m.get("status") == "ok" for m in models.values()) else "degraded"
    body: dict[str, Any] = {"status": status, "ready": not reasons, "reasons": reasons}
    if not _add_admin_details(call, body, models):
        body["models"] = {name: _public(m) for name, m in models.items()}
        summary = call.gateway.tuples.summary()
        body["governance"] = {"stale": summary["stale"], "refused": summary["refused"]}
    return json_reply(body, status=503 if reasons else 200)


async def metrics(call: Call) -> Reply:
    return Reply(call.gateway.telemetry.prometheus_text(), media_type=PROMETHEUS)


async def openapi(call: Call) -> Reply:
    return json_reply(call.gateway.openapi)


ENDPOINTS = [
    Endpoint("/livez", "GET", livez, access="public"),
    Endpoint("/readyz", "GET", readyz, access="public"),
    Endpoint("/health", "GET", health, access="public"),
    Endpoint("/metrics", "GET", metrics, access="public"),
    Endpoint("/openapi.json", "GET", openapi, access="public"),
]
