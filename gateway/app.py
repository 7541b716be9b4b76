"""The application factory. No module state: everything a gateway holds hangs off its app."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.canary_admin import CANARY_ROUTES
from gateway.errors import (
    MethodNotAllowedError,
    NotFoundError,
    TiergateError,
    internal_error,
)
from gateway.fastpath import COMPLETION_PATHS, CompletionsApp, new_request_id
from gateway.records.admin import ADMIN_ROUTES
from gateway.routes import ROUTES, THRESHOLD_ROUTES, error_response
from gateway.settings import Settings, load_settings
from gateway.state import GatewayState

log = logging.getLogger("tiergate.app")


class TiergateApp(Starlette):
    """Starlette, with the completion endpoints handed to :class:`CompletionsApp` before any of
    Starlette's layers (see :mod:`gateway.fastpath` for why)."""

    completions: CompletionsApp

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in COMPLETION_PATHS:
            await self.completions(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


class RequestIdMiddleware:
    """Gives every request of the Starlette routes an id (``x-request-id`` on every response)
    and turns any uncaught exception into an OpenAI-shaped 500: a client never sees a
    traceback. (The completion endpoints do the same in :mod:`gateway.fastpath`.)"""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                MutableHeaders(scope=message).append("x-request-id", request_id)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("request %s failed", request_id)
            if started:
                raise
            await error_response(internal_error())(scope, receive, send_with_id)


async def _tiergate_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, TiergateError)
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return error_response(NotFoundError(f"Unknown path {request.url.path}"))
    if exc.status_code == 405:
        return error_response(
            MethodNotAllowedError(f"{request.method} is not allowed on {request.url.path}"))
    return error_response(TiergateError(str(exc.detail)))


def create_app(settings: Settings) -> TiergateApp:
    state = GatewayState.build(settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if state.recorder is not None:
            await state.recorder.start()
        await state.registry.start()
        if state.router is not None:
            await state.router.thresholds.start()
        if state.shadow is not None:
            await state.shadow.start()
        await state.canaries.start()
        log.info("tiergate serving models: %s", ", ".join(state.registry.backends) or "(none)")
        try:
            yield
        finally:
            if state.shadow is not None:
                await state.shadow.aclose()
            await state.canaries.aclose()
            if state.router is not None:
                await state.router.thresholds.aclose()
            await state.registry.aclose()
            if state.recorder is not None:
                await state.recorder.aclose()  # delivers what is left to the store
            state.telemetry.shutdown()

    app = TiergateApp(
        routes=ROUTES + ADMIN_ROUTES + THRESHOLD_ROUTES + CANARY_ROUTES,
        lifespan=lifespan,
        exception_handlers={TiergateError: _tiergate_error, HTTPException: _http_error},
    )
    app.state.tiergate = state
    app.completions = CompletionsApp(state)
    app.add_middleware(RequestIdMiddleware)
    return app


def app_from_environment() -> TiergateApp:
    """Factory for ``uvicorn --factory`` and worker processes: settings from the environment."""
    return create_app(load_settings())
