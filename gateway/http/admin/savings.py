"""``GET /admin/savings``: what routing saves (:mod:`gateway.governance.savings`), from this
gateway's record store and shadow log — the figures ``tiergate report`` prints in its
``savings`` section. Query parameters: ``since``, ``until`` (times as ``tiergate records``
takes them; default: everything recorded, until now), ``route``, ``bucket`` (the series' time
step in seconds, default 3600)."""

from __future__ import annotations

import time

from gateway.http.admin.records import _sink, _time
from gateway.http.exchange import Call, Reply, json_reply
from gateway.http.frontdoor import Endpoint
from gateway.kernel.errors import InvalidRequestError


async def savings(call: Call) -> Reply:
    from gateway.governance.savings import collect_savings

    params = call.query()
    sink = await _sink(call)
    until = _time(params, "until")
    try:
        bucket = float(params.get("bucket", "3600"))
    except ValueError as exc:
        raise InvalidRequestError("bucket must be a number of seconds", param="bucket") from exc
    if not 60 <= bucket <= 366 * 86400:
        raise InvalidRequestError("bucket must be in [60, 31622400] seconds", param="bucket")
    data = await collect_savings(call.gateway.settings, sink, _time(params, "since"),
                                 time.time() if until is None else until, params.get("route"),
                                 bucket)
    return json_reply(data)


ENDPOINTS = [Endpoint("/savings", "GET", savings)]
