"""The admin API over the routes (mounted at ``/admin``, :mod:`gateway.http.admin`):

- ``GET /admin/routes`` — every route: mode, tiers, threshold in force and its range, whether
  thresholds are shared (Redis) and connected, the escalation share it was calibrated for,
  whether evaluation data is configured;
- ``GET /admin/routes/{route}/curve?source=evaluation|live`` — its quality-vs-escalation curve
  (:mod:`gateway.serving.curves`): every reachable operating point and the one in force.
"""

from __future__ import annotations

from typing import Any

from gateway.http.admin.thresholds import route_store
from gateway.http.exchange import Call, Reply, json_reply
from gateway.http.frontdoor import Endpoint
from gateway.kernel.errors import InvalidRequestError
from gateway.serving.curves import SOURCES


async def list_routes(call: Call) -> Reply:
    router, settings = call.gateway.router, call.gateway.settings.routes
    data: list[dict[str, Any]] = []
    if router is not None:
        store = router.thresholds
        shared = store.redis_url is not None
        for name, route in router.routes.items():
            low, high = store.ranges.get(name, (0.0, 1.0))
            data.append({"route": name, "mode": route.mode, "small": route.small,
                         "large": route.large, "threshold": store.get(name),
                         "range": [low, high], "shared": shared,
                         "connected": store.connected if shared else None,
                         "expected_escalation": settings[name].expected_escalation,
                         "evaluation": settings[name].evaluation_data is not None})
    return json_reply({"object": "list", "data": data})


async def curve(call: Call) -> Reply:
    route, _ = route_store(call)
    source = call.query().get("source", "evaluation")
    if source not in SOURCES:
        raise InvalidRequestError(f"source must be one of {', '.join(SOURCES)}", param="source")
    return json_reply(await call.gateway.curves.curve(route, source))


ENDPOINTS = [
    Endpoint("/routes", "GET", list_routes),
    Endpoint("/routes/{route}/curve", "GET", curve),
]
