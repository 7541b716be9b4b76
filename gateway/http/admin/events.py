"""The trail of admin actions (:mod:`gateway.governance.events`), mounted at ``/admin``:

- ``GET /admin/audit/events?kind=&route=&target=&limit=`` — entries newest first (``route``
  is the ``target`` of ``threshold`` entries; ``limit`` default 100, at most 1000).

:func:`record_event` is what the admin routes that change something call once it is done: the
actor is the calling admin key's id, the replica this gateway's.
"""

from __future__ import annotations

from typing import Any

from gateway.governance.events import KINDS, AdminEvent
from gateway.http.exchange import Call, Reply, json_reply
from gateway.http.frontdoor import Endpoint
from gateway.http.parsing import query_limit
from gateway.kernel.errors import InvalidRequestError

MAX_LIMIT = 1000
MAX_REASON = 1000
"""Characters of a reason, at most."""


def reason_of(body: dict[str, Any]) -> str | None:
    """The optional ``reason`` of an admin body (a string of at most :data:`MAX_REASON`)."""
    reason = body.get("reason")
    if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON):
        raise InvalidRequestError(f"reason must be a string of at most {MAX_REASON} characters",
                                  param="reason")
    return reason


async def record_event(call: Call, kind: str, target: str, before: Any, after: Any,
                       reason: str | None = None) -> None:
    gateway = call.gateway
    await gateway.events.append(AdminEvent.new(kind, target, call.caller, before, after, reason,
                                               gateway.tuples.replica))


async def list_events(call: Call) -> Reply:
    params = call.query()
    kind = params.get("kind")
    if kind is not None and kind not in KINDS:
        raise InvalidRequestError(f"kind must be one of {', '.join(KINDS)}", param="kind")
    target = params.get("target", params.get("route"))
    limit = query_limit(params, 100, MAX_LIMIT)
    events = await call.gateway.events.list(kind, target, limit)
    return json_reply({"object": "list", "data": [e.to_json() for e in events]})


ENDPOINTS = [Endpoint("/audit/events", "GET", list_events)]
