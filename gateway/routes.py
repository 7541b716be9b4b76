"""HTTP routes of the OpenAI surface. Thin: read and parse the body, authorize, call the serving
object, serialize. Everything else lives in :mod:`gateway.serving`. The completion endpoints
themselves are :mod:`gateway.fastpath` (a raw ASGI app, for speed); their body parsing is here."""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.auth import authenticate_admin
from gateway.errors import (
    InvalidRequestError,
    NotFoundError,
    RequestTooLargeError,
    TiergateError,
)
from gateway.state import GatewayState
from router.thresholds import ThresholdError, ThresholdStore

M = TypeVar("M", bound=BaseModel)


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error_response(exc: TiergateError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers())


def state_of(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.tiergate
    return state


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestTooLargeError(f"Request body of {declared} bytes exceeds {limit} bytes.")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestTooLargeError(f"Request body exceeds {limit} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "json-or-python"}


def _param(loc: tuple[Any, ...]) -> str | None:
    """A pydantic error location as OpenAI's ``param`` (``messages.0.role``), without the
    union-member tags pydantic inserts (``str``, ``list[int]``, ``function-after[...]``)."""
    parts = [str(p) for p in loc
             if isinstance(p, int) or (str(p) not in _TYPE_TAGS and not any(c in str(p)
                                                                         for c in "[-"))]
    return ".".join(parts) or None


def _describe(errors: list[Any]) -> tuple[str, str | None]:
    param = _param(errors[0].get("loc", ()))
    # A union reports one error per member: say what each would have needed.
    messages = list(dict.fromkeys(str(e.get("msg", "invalid value")) for e in errors
                                  if _param(e.get("loc", ())) == param))
    message = "; or ".join(messages[:3])
    return (f"{param}: {message}" if param else message), param


def parse(model: type[M], body: bytes) -> M:
    """A request body → its typed model, or a 400 that names the offending parameter."""
    try:
        return model.model_validate_json(body)  # one pass over the bytes, no dict in between
    except ValidationError as exc:
        if exc.errors()[0]["type"] in ("json_invalid", "model_type"):
            return _parse_slowly(model, body)
        message, param = _describe(exc.errors(include_url=False, include_input=False))
        raise InvalidRequestError(message, param=param) from exc


def _parse_slowly(model: type[M], body: bytes) -> M:
    """The error for a body that is not a JSON object, in words a client understands."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(f"The body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidRequestError("The body must be a JSON object.")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        message, param = _describe(exc.errors(include_url=False, include_input=False))
        raise InvalidRequestError(message, param=param) from exc


async def list_models(request: Request) -> Response:
    state = state_of(request)
    state.auth.authenticate(request.headers.get("authorization"))
    return JSONResponse({"object": "list", "data": state.route_cards() + state.registry.cards()})


async def retrieve_model(request: Request) -> Response:
    state = state_of(request)
    state.auth.authenticate(request.headers.get("authorization"))
    name = request.path_params["model"]
    for card in state.route_cards():
        if card["id"] == name:
            return JSONResponse(card)
    return JSONResponse(state.registry.card(name))


def require_admin(request: Request) -> GatewayState:
    state = state_of(request)
    authenticate_admin(state.settings.auth.admin_keys, request.headers.get("authorization"))
    return state


def _threshold_store(state: GatewayState, route: str) -> ThresholdStore:
    if state.router is None or route not in state.router.routes:
        raise NotFoundError(f"No route {route!r}")
    return state.router.thresholds


async def get_threshold(request: Request) -> Response:
    state = require_admin(request)
    route = request.path_params["route"]
    store = _threshold_store(state, route)
    low, high = store.ranges.get(route, (0.0, 1.0))
    return JSONResponse({"route": route, "threshold": store.get(route), "range": [low, high],
                         "shared": store.redis_url is not None})


async def put_threshold(request: Request) -> Response:
    state = require_admin(request)
    route = request.path_params["route"]
    store = _threshold_store(state, route)
    body = await read_body(request, 4096)
    try:
        value = orjson.loads(body).get("threshold")
    except (orjson.JSONDecodeError, AttributeError) as exc:
        raise InvalidRequestError('Send {"threshold": <number>}.', param="threshold") from exc
    try:
        await store.set(route, value)
    except ThresholdError as exc:
        raise InvalidRequestError(str(exc), param="threshold") from exc
    return await get_threshold(request)


async def health(request: Request) -> Response:
    state = state_of(request)
    models = await state.registry.health()
    status = "ok" if all(m.get("status") == "ok" for m in models.values()) else "degraded"
    return JSONResponse({"status": status, "models": models})


async def metrics(request: Request) -> Response:
    return Response(state_of(request).telemetry.prometheus_text(),
                    media_type="text/plain; version=0.0.4; charset=utf-8")


async def openapi(request: Request) -> Response:
    return JSONResponse(state_of(request).openapi)


THRESHOLD_ROUTES = [
    Route("/admin/routes/{route}/threshold", get_threshold, methods=["GET"]),
    Route("/admin/routes/{route}/threshold", put_threshold, methods=["PUT"]),
]

ROUTES = [
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{model:path}", retrieve_model, methods=["GET"]),
    Route("/health", health, methods=["GET"]),
    Route("/openapi.json", openapi, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
]
