"""The admin API over the tuple registry (mounted at ``/admin``, :mod:`gateway.http.admin`).

- ``GET /admin/registry`` — every served model: tuple digest, gate status and results, owner,
  eval, when it was last evaluated, stale or not, its eval per slice against baseline and
  tolerance (``slices``); and the coverage numbers; ``?tuples=true`` adds each model's whole
  tuple (``tuple``);
- ``GET /admin/registry/{name_or_digest}`` — one model (or the tuple a digest names, even one
  no longer served): the whole tuple and which replica served it when (the history).

The same as ``tiergate registry list|show``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.http.exchange import Call, Reply, json_reply
from gateway.http.frontdoor import Endpoint
from gateway.http.parsing import query_flag
from gateway.kernel.errors import NotFoundError


async def list_tuples(call: Call) -> Reply:
    tuples = call.gateway.tuples
    summary = tuples.summary()
    if query_flag(call.query(), "tuples"):  # the console's Models page: everything in one request
        for model in summary["models"]:
            model["tuple"] = tuples.models.get(model["name"]).describe().model_dump(mode="json")
    return json_reply({"object": "registry", **summary})


async def show_tuple(call: Call) -> Reply:
    tuples, key = call.gateway.tuples, call.path_params["key"]
    entry = tuples.entries.get(key)
    body: dict[str, Any] = {"object": "registry.tuple"}
    if entry is not None:
        body["entry"] = entry.to_json()
        body["tuple"] = tuples.models.get(key).describe().model_dump(mode="json")
    history = tuples.history
    if history is not None:
        servings = await asyncio.to_thread(history.servings, key)
        body["served"] = [s.to_json() for s in servings]
        if entry is None and servings:
            body["tuple"] = await asyncio.to_thread(history.tuple_of, servings[0].digest)
    if "tuple" not in body:
        raise NotFoundError(f"No served model or known tuple {key!r}", param="key")
    return json_reply(body)


ENDPOINTS = [
    Endpoint("/registry", "GET", list_tuples),
    Endpoint("/registry/{key}", "GET", show_tuple),
]
