"""The admin API over the records, behind the admin keys (``auth.admin_keys``).

- ``GET /admin/records`` — summaries, newest first; query parameters ``since``, ``until``
  (times as ``tiergate records`` takes them), ``route``, ``model``, ``caller``, ``chain``,
  ``escalated`` (``true``/``false``), ``limit`` (default 100, at most 1000);
- ``GET /admin/records/{record_id}`` — one record in full;
- ``GET /admin/audit/verify`` — the chains verified (``since`` optional).

No admin keys configured: every admin route answers 403 (the admin API is off).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.auth import authenticate_admin
from gateway.errors import InvalidRequestError, NotFoundError

if TYPE_CHECKING:
    from gateway.records.recorder import Recorder
    from gateway.records.sinks import RecordQuery, RecordSink

MAX_LIMIT = 1000


def _json(content: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status, media_type="application/json")


async def _sink(request: Request) -> RecordSink:
    state = request.app.state.tiergate
    authenticate_admin(state.settings.auth.admin_keys, request.headers.get("authorization"))
    recorder: Recorder | None = getattr(state, "recorder", None)
    if recorder is None:
        raise NotFoundError("Decode records are off (records.sink = \"none\").")
    return await recorder.reader()


def _time(params: dict[str, str], name: str) -> float | None:
    from gateway.records.sinks.base import parse_time

    if name not in params:
        return None
    try:
        return parse_time(params[name])
    except ValueError as exc:
        raise InvalidRequestError(str(exc), param=name) from exc


def _query(params: dict[str, str]) -> RecordQuery:
    from gateway.records.sinks import RecordQuery

    escalated = params.get("escalated")
    if escalated not in (None, "true", "false"):
        raise InvalidRequestError("escalated must be true or false", param="escalated")
    try:
        limit = int(params.get("limit", "100"))
    except ValueError as exc:
        raise InvalidRequestError("limit must be an integer", param="limit") from exc
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequestError(f"limit must be in [1, {MAX_LIMIT}]", param="limit")
    return RecordQuery(since=_time(params, "since"), until=_time(params, "until"),
                       route=params.get("route"), model=params.get("model"),
                       caller=params.get("caller"), chain_id=params.get("chain"),
                       escalated=None if escalated is None else escalated == "true",
                       limit=limit)


async def list_records(request: Request) -> Response:
    sink = await _sink(request)
    query = _query(dict(request.query_params))
    rows = [row.summary() async for row in sink.query(query)]
    return _json({"object": "list", "data": rows})


async def get_record(request: Request) -> Response:
    sink = await _sink(request)
    record_id = request.path_params["record_id"]
    stored = await sink.get(record_id)
    if stored is None:
        raise NotFoundError(f"No record {record_id!r}.")
    return Response(stored.document(), media_type="application/json")


async def verify(request: Request) -> Response:
    from gateway.records.chain import verify_store
    from gateway.records.sinks import signer_for

    sink = await _sink(request)
    settings = request.app.state.tiergate.settings.records
    since = _time(dict(request.query_params), "since")
    reports = await verify_store(sink, signer_for(settings), settings.checkpoint_every,
                                 since=since)
    return _json({"ok": all(r.ok for r in reports), "chains": [r.to_dict() for r in reports]})


ADMIN_ROUTES = [
    Route("/admin/records", list_records, methods=["GET"]),
    Route("/admin/records/{record_id}", get_record, methods=["GET"]),
    Route("/admin/audit/verify", verify, methods=["GET"]),
]
