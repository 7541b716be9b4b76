"""The OpenAI surface: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/responses``,
``/v1/embeddings`` and ``/v1/models``.

Thin, like every route: read and parse the body, call the serving object, answer. Request ids,
auth, body limits and errors are the front door's (:mod:`gateway.http.frontdoor`).
"""

from __future__ import annotations

from functools import partial

import orjson

from gateway import protocol
from gateway.http.exchange import Call, Reply, json_reply
from gateway.http.frontdoor import Endpoint
from gateway.http.parsing import parse
from gateway.kernel.errors import ModelNotFoundError
from gateway.listener import RequestContext


async def complete(model: type[protocol.OpenAIRequest], call: Call) -> Reply:
    """``/v1/chat/completions``, ``/v1/completions`` and ``/v1/responses`` (``model``: the
    request's protocol model), bound per path with ``partial``: one coroutine per request."""
    parsed = parse(model, await call.body(), call.gateway.settings.limits)
    served = await call.gateway.serving.create(parsed, _context(call))
    if served.stream is not None:
        return Reply(headers=served.headers, stream=served.stream)
    return Reply(orjson.dumps(served.body), headers=served.headers)


def _context(call: Call) -> RequestContext:
    trace = {}
    traceparent = call.header(b"traceparent")
    if traceparent is not None:
        trace["traceparent"] = traceparent
        tracestate = call.header(b"tracestate")
        if tracestate is not None:
            trace["tracestate"] = tracestate
    return RequestContext(request_id=call.request_id, caller=call.caller, trace_headers=trace,
                          operation=call.scope["path"])


async def embeddings(call: Call) -> Reply:
    """``/v1/embeddings``."""
    parsed = parse(protocol.EmbeddingsRequest, await call.body(),
                   call.gateway.settings.limits)
    served = await call.gateway.serving.embed(parsed, _context(call))
    return Reply(orjson.dumps(served.body), headers=served.headers)


async def list_models(call: Call) -> Reply:
    """The routes and models, only those the caller's key may use when its policy says."""
    gateway = call.gateway
    cards = gateway.route_cards() + gateway.registry.cards()
    if call.models is not None:
        cards = [card for card in cards if card["id"] in call.models]
    return json_reply({"object": "list", "data": cards})


async def retrieve_model(call: Call) -> Reply:
    """One route or model; one the caller's key may not use does not exist for it."""
    gateway, name = call.gateway, call.path_params["model"]
    if len(name) > gateway.settings.limits.max_model_name_chars:
        raise ModelNotFoundError(f"The model '{name[:protocol.PARAM_CHARS]}…' does not exist",
                                 param="model")
    if call.models is not None and name not in call.models:
        raise ModelNotFoundError(f"The model '{name}' does not exist", param="model")
    for card in gateway.route_cards():
        if card["id"] == name:
            return json_reply(card)
    return json_reply(gateway.registry.card(name))


ENDPOINTS = [
    Endpoint("/v1/chat/completions", "POST", partial(complete, protocol.ChatCompletionRequest),
             metered=True),
    Endpoint("/v1/completions", "POST", partial(complete, protocol.CompletionRequest),
             metered=True),
    Endpoint("/v1/responses", "POST", partial(complete, protocol.ResponsesRequest),
             metered=True),
    Endpoint("/v1/embeddings", "POST", embeddings, metered=True),
    Endpoint("/v1/models", "GET", list_models),
    Endpoint("/v1/models/{model:path}", "GET", retrieve_model),
]
