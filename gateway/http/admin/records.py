"""The admin API over the records (mounted at ``/admin``, :mod:`gateway.http.admin`).

- ``GET /admin/records`` — summaries, newest first; query parameters ``since``, ``until``
  (times as ``tiergate records`` takes them), ``route``, ``model``, ``caller``, ``chain``,
  ``escalated`` (``true``/``false``), ``limit`` (default 100, at most 1000);
- ``GET /admin/records/{record_id}`` — one record in full;
- ``POST /admin/records/{record_id}/replay`` — the record's model calls decoded again on this
  gateway's own models (:mod:`gateway.records.replay`): ``identical``, ``diverged`` (the first
  divergence) or ``refused`` (why), all answered 200; an unknown record 404;
- ``GET /admin/audit/verify`` — the chains verified (``since`` optional: from the first record
  of the window); ``record=ID``: that record's chain only, up to the record.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.http.exchange import Call, Reply, json_reply
from gateway.http.frontdoor import Endpoint
from gateway.http.parsing import query_flag, query_limit
from gateway.kernel.errors import InvalidRequestError, NotFoundError

if TYPE_CHECKING:
    from gateway.records.recorder import Recorder
    from gateway.records.sinks import RecordQuery, RecordSink

MAX_LIMIT = 1000


async def _sink(call: Call) -> RecordSink:
    recorder: Recorder | None = call.gateway.recorder
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

    return RecordQuery(since=_time(params, "since"), until=_time(params, "until"),
                       route=params.get("route"), model=params.get("model"),
                       caller=params.get("caller"), chain_id=params.get("chain"),
                       escalated=query_flag(params, "escalated"),
                       limit=query_limit(params, 100, MAX_LIMIT))


async def list_records(call: Call) -> Reply:
    sink = await _sink(call)
    query = _query(call.query())
    rows = [row.summary() async for row in sink.query(query)]
    return json_reply({"object": "list", "data": rows})


async def get_record(call: Call) -> Reply:
    sink = await _sink(call)
    record_id = call.path_params["record_id"]
    stored = await sink.get(record_id)
    if stored is None:
        raise NotFoundError(f"No record {record_id[:200]!r}.")
    return Reply(stored.document())


async def replay(call: Call) -> Reply:
    from gateway.records.replay import Replayer

    sink = await _sink(call)
    record_id = call.path_params["record_id"]
    if await sink.get(record_id) is None:
        raise NotFoundError(f"No record {record_id[:200]!r}.")
    gateway = call.gateway
    # the gateway's models run already (or are loading): replay never starts another copy
    replayer = Replayer(gateway.settings, sink, gateway.registry,
                        started=list(gateway.registry.backends))
    return json_reply((await replayer.replay(record_id)).to_dict())


async def verify(call: Call) -> Reply:
    from gateway.records.audit import verify_store
    from gateway.records.replay import Replayer
    from gateway.records.sinks import signer_for

    sink = await _sink(call)
    params = call.query()
    record_id = params.get("record")
    if record_id is not None:  # one record's chain, from its genesis (or anchor) to the record
        stored = await sink.get(record_id)
        if stored is None:
            raise NotFoundError(f"No record {record_id[:200]!r}.", param="record")
        gateway = call.gateway
        report = await Replayer(gateway.settings, sink, gateway.registry).verify(
            stored.chain_id, stored.seq, whole=False)
        return json_reply({"ok": report.ok, "chains": [report.to_dict()]})
    settings = call.gateway.settings.records
    reports = await verify_store(sink, signer_for(settings), settings.checkpoint_every,
                                 since=_time(params, "since"))
    return json_reply({"ok": all(r.ok for r in reports), "chains": [r.to_dict() for r in reports]})


ENDPOINTS = [
    Endpoint("/records", "GET", list_records),
    Endpoint("/records/{record_id}", "GET", get_record),
    Endpoint("/records/{record_id}/replay", "POST", replay),
    Endpoint("/audit/verify", "GET", verify),
]
