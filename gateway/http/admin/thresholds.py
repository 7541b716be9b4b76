"""``GET`` / ``PUT /admin/routes/{route}/threshold``: a route's escalation threshold, read and
changed live (shared by every replica through Redis when configured). A change Redis does not
take answers 503 (``service_unavailable``) and is applied on no replica, this one included. A
change is an entry of the admin audit trail (``GET /admin/audit/events``): who (the admin key's
id), when, before, after, the body's optional ``reason``, the replica."""

from __future__ import annotations

from typing import Any

from gateway.http.admin.events import reason_of, record_event
from gateway.http.exchange import Call, Reply, json_reply
from gateway.http.frontdoor import Endpoint
from gateway.http.parsing import json_object
from gateway.kernel.errors import InvalidRequestError, NotFoundError
from router.thresholds import ThresholdError, ThresholdStore


def route_store(call: Call) -> tuple[str, ThresholdStore]:
    """The route named in the path and the thresholds (404 for a route not configured)."""
    router, route = call.gateway.router, call.path_params["route"]
    if router is None or route not in router.routes:
        raise NotFoundError(f"No route {route[:200]!r}")
    return route, router.thresholds


async def get_threshold(call: Call) -> Reply:
    route, store = route_store(call)
    low, high = store.ranges.get(route, (0.0, 1.0))
    shared = store.redis_url is not None
    return json_reply({"route": route, "threshold": store.get(route), "range": [low, high],
                       "shared": shared, "connected": store.connected if shared else None})


async def put_threshold(call: Call) -> Reply:
    route, store = route_store(call)
    hint = 'Send {"threshold": <number>, "reason": "<why>" (optional)}.'
    body = json_object(await call.body(limit=4096), hint, "threshold")
    value: Any = body.get("threshold")
    reason = reason_of(body)
    before = store.get(route)
    try:
        await store.set(route, value)
    except ThresholdError as exc:
        raise InvalidRequestError(str(exc), param="threshold") from exc
    await record_event(call, "threshold", route, before, store.get(route), reason)
    return await get_threshold(call)


ENDPOINTS = [
    Endpoint("/routes/{route}/threshold", "GET", get_threshold),
    Endpoint("/routes/{route}/threshold", "PUT", put_threshold),
]
