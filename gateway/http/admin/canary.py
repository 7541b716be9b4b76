"""The admin API over the canaries (mounted at ``/admin``, :mod:`gateway.http.admin`).

- ``GET /admin/canary`` — every pinned model's status (pin, last run, drift state, rollback);
- ``GET /admin/canary/{model}`` — one model's status;
- ``POST /admin/canary/{model}/pin`` — pin the model's live version on its configured canary
  set (golden outputs decoded now, greedily), if its tuple passes its gates as serving does
  (:mod:`gateway.governance.pinning`; a ``gate_override`` or ``governance.ungated = "warn"``
  pins with a WARNING);
- ``POST /admin/canary/{model}/run`` — a canary run now (rollback follows its result);
- ``POST /admin/canary/{model}/ack`` — acknowledge the model's alarm (body, optional:
  ``{"by": "who"}``): rollback ends on every replica, the drift evidence restarts;
- ``GET /admin/canary/{model}/runs?limit=N`` — its stored runs, newest first (default 50, at
  most 500): per-slice figures and alarms, ``passed`` (no drift after the run and no new
  alarm); each run's per-item comparisons only with ``items=true``;
- ``DELETE /admin/canary/{model}/pin`` — unpin (older pins and run history stay in the store).

Pins, unpins and acknowledgements are entries of the admin audit trail (``GET
/admin/audit/events``, kinds ``pin``, ``unpin``, ``ack``).

The same operations as ``tiergate canary ...``; errors are OpenAI-shaped (404 not pinned or not
configured, 409 the canary set changed since the pin or — code ``model_not_validated`` — the
tuple to pin fails its gates, 503 ``model_loading`` a model to pin not loaded yet, 502 the
model failed to answer).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from canary.monitor import CanaryMonitor
from gateway.governance.pinning import check_pin
from gateway.http.admin.events import record_event
from gateway.http.exchange import Call, Reply, json_reply
from gateway.http.frontdoor import Endpoint
from gateway.http.parsing import json_object, query_flag, query_limit
from gateway.kernel.errors import ConfigError, InvalidRequestError, TiergateError


def _monitor(call: Call) -> CanaryMonitor:
    monitor = call.gateway.canaries
    model = call.path_params.get("model")
    if model is not None:
        monitor.service.require_configured(model)  # 404 for a model that is not configured
    return monitor


async def _answer(operation: Callable[[], Awaitable[Any]]) -> Reply:
    """Run a canary operation; store and canary-set problems are the server's, said plainly."""
    try:
        return json_reply(await operation())
    except ConfigError as exc:
        raise TiergateError(f"canary: {exc}") from exc


async def list_statuses(call: Call) -> Reply:
    monitor = _monitor(call)

    async def statuses() -> dict[str, Any]:
        return {"object": "list", "data": [s.to_json() for s in await monitor.statuses()]}

    return await _answer(statuses)


async def get_status(call: Call) -> Reply:
    monitor, model = _monitor(call), call.path_params["model"]

    async def status() -> dict[str, Any]:
        return (await monitor.status(model)).to_json()

    return await _answer(status)


RUNS_LIMIT = (50, 500)
"""Runs listed by default, and at most."""


async def runs(call: Call) -> Reply:
    monitor, model = _monitor(call), call.path_params["model"]
    params = call.query()
    limit = query_limit(params, *RUNS_LIMIT)
    exclude = None if query_flag(params, "items") else {"items"}

    async def newest_first() -> dict[str, Any]:
        stored = await monitor.service.store.runs(model, limit)
        return {"object": "list", "data": [
            {**run.model_dump(mode="json", exclude=exclude),
             "passed": run.status == "ok" and not run.new_alarms}
            for run in reversed(stored)]}

    return await _answer(newest_first)


def _pin_of(status: dict[str, Any]) -> dict[str, Any] | None:
    """What the audit trail keeps of a pin: its version and tuple."""
    pin = status.get("pin")
    return None if pin is None else {"version": pin["version"],
                                     "tuple_digest": pin["tuple_digest"]}


async def pin(call: Call) -> Reply:
    monitor, model = _monitor(call), call.path_params["model"]
    check_pin(call.gateway.settings, call.gateway.registry, model)  # 409: it fails its gates

    async def pin_now() -> dict[str, Any]:
        before = _pin_of((await monitor.status(model)).to_json())
        await monitor.pin(model)
        status = (await monitor.status(model)).to_json()
        await record_event(call, "pin", model, before, _pin_of(status))
        return status

    return await _answer(pin_now)


async def unpin(call: Call) -> Reply:
    monitor, model = _monitor(call), call.path_params["model"]

    async def unpin_now() -> dict[str, Any]:
        before = _pin_of((await monitor.status(model)).to_json())
        await monitor.unpin(model)
        await record_event(call, "unpin", model, before, None)
        return {"model": model, "unpinned": True}

    return await _answer(unpin_now)


async def run(call: Call) -> Reply:
    monitor, model = _monitor(call), call.path_params["model"]

    async def run_now() -> dict[str, Any]:
        result = await monitor.run(model)
        return {**result.model_dump(mode="json"),
                "rollback_to": monitor.rollbacks.values.get(model)}

    return await _answer(run_now)


async def ack(call: Call) -> Reply:
    monitor, model = _monitor(call), call.path_params["model"]
    body = await call.body(limit=4096)
    by: Any = None
    if body.strip():
        by = json_object(body, 'Send {"by": "<who>"} or nothing.', "by").get("by")
        if by is not None and not isinstance(by, str):
            raise InvalidRequestError("by must be a string", param="by")
    async def ack_now() -> dict[str, Any]:
        acknowledged = await monitor.ack(model, by)
        await record_event(call, "ack", model, acknowledged["acknowledged"],
                           {"by": by, "rollback_to": acknowledged["rollback_to"]})
        return acknowledged

    return await _answer(ack_now)


ENDPOINTS = [
    Endpoint("/canary", "GET", list_statuses),
    Endpoint("/canary/{model}", "GET", get_status),
    Endpoint("/canary/{model}/runs", "GET", runs),
    Endpoint("/canary/{model}/pin", "POST", pin),
    Endpoint("/canary/{model}/pin", "DELETE", unpin),
    Endpoint("/canary/{model}/run", "POST", run),
    Endpoint("/canary/{model}/ack", "POST", ack),
]
