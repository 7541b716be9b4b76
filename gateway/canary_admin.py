"""The admin API over the canaries, behind the admin keys (``auth.admin_keys``).

- ``GET /admin/canary`` — every pinned model's status (pin, last run, drift state, rollback);
- ``GET /admin/canary/{model}`` — one model's status;
- ``POST /admin/canary/{model}/pin`` — pin the model's live version on its configured canary
  set (golden outputs decoded now, greedily);
- ``POST /admin/canary/{model}/run`` — a canary run now (rollback follows its result);
- ``POST /admin/canary/{model}/ack`` — acknowledge the model's alarm (body, optional:
  ``{"by": "who"}``): rollback ends on every replica, the drift evidence restarts;
- ``DELETE /admin/canary/{model}/pin`` — unpin (older pins and run history stay in the store).

The same operations as ``tiergate canary ...``; errors are OpenAI-shaped (404 not pinned or not
configured, 409 the canary set changed since the pin, 502 the model failed to answer).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.auth import authenticate_admin
from gateway.canaries import CanaryMonitor
from gateway.errors import ConfigError, InvalidRequestError, TiergateError
from gateway.routes import read_body


def _monitor(request: Request) -> CanaryMonitor:
    state = request.app.state.tiergate
    authenticate_admin(state.settings.auth.admin_keys, request.headers.get("authorization"))
    monitor: CanaryMonitor = state.canaries
    model = request.path_params.get("model")
    if model is not None:
        monitor.service.require_configured(model)  # 404 for a model that is not configured
    return monitor


async def _answer(call: Callable[[], Awaitable[Any]]) -> Response:
    """Run a canary operation; store and canary-set problems are the server's, said plainly."""
    try:
        return JSONResponse(await call())
    except ConfigError as exc:
        raise TiergateError(f"canary: {exc}") from exc


async def list_statuses(request: Request) -> Response:
    monitor = _monitor(request)

    async def statuses() -> dict[str, Any]:
        return {"object": "list", "data": [s.to_json() for s in await monitor.statuses()]}

    return await _answer(statuses)


async def get_status(request: Request) -> Response:
    monitor, model = _monitor(request), request.path_params["model"]

    async def status() -> dict[str, Any]:
        return (await monitor.status(model)).to_json()

    return await _answer(status)


async def pin(request: Request) -> Response:
    monitor, model = _monitor(request), request.path_params["model"]

    async def pin_now() -> dict[str, Any]:
        await monitor.pin(model)
        return (await monitor.status(model)).to_json()

    return await _answer(pin_now)


async def unpin(request: Request) -> Response:
    monitor, model = _monitor(request), request.path_params["model"]

    async def unpin_now() -> dict[str, Any]:
        await monitor.unpin(model)
        return {"model": model, "unpinned": True}

    return await _answer(unpin_now)


async def run(request: Request) -> Response:
    monitor, model = _monitor(request), request.path_params["model"]

    async def run_now() -> dict[str, Any]:
        result = await monitor.run(model)
        return {**result.model_dump(mode="json"),
                "rollback_to": monitor.rollbacks.values.get(model)}

    return await _answer(run_now)


async def ack(request: Request) -> Response:
    monitor, model = _monitor(request), request.path_params["model"]
    body = await read_body(request, 4096)
    by: Any = None
    if body.strip():
        try:
            by = orjson.loads(body).get("by")
        except (orjson.JSONDecodeError, AttributeError) as exc:
            raise InvalidRequestError('Send {"by": "<who>"} or nothing.', param="by") from exc
        if by is not None and not isinstance(by, str):
            raise InvalidRequestError("by must be a string", param="by")
    return await _answer(lambda: monitor.ack(model, by))


CANARY_ROUTES = [
    Route("/admin/canary", list_statuses, methods=["GET"]),
    Route("/admin/canary/{model}", get_status, methods=["GET"]),
    Route("/admin/canary/{model}/pin", pin, methods=["POST"]),
    Route("/admin/canary/{model}/pin", unpin, methods=["DELETE"]),
    Route("/admin/canary/{model}/run", run, methods=["POST"]),
    Route("/admin/canary/{model}/ack", ack, methods=["POST"]),
]
