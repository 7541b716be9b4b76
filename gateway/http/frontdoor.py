"""The one front door: every HTTP request of the gateway passes through :class:`FrontDoor`.

It does, once for every path: the request id (``x-request-id`` on every answer), finding the
route (404, or 405 with ``Allow``), authorization by the route's :data:`Access` (client keys,
admin keys, or none), the body limit (:meth:`Call.body`), and error shaping — every error a
client sees is OpenAI-shaped (:func:`gateway.kernel.errors.error_body`), never a traceback. Then
it writes the route's :class:`Reply`. Routes are thin: parse, call the serving object or a
service, answer.

It is a small ASGI app rather than Starlette's stack: on the completion hot path Starlette's
layers (error and exception middleware, ``Request``/``Response`` objects, the task group a
streaming response opens) were a large share of the gateway's CPU per request
(``benchmarks/overhead.py``; docs/architecture.md). The lifespan protocol starts and stops the
gateway's services (:meth:`GatewayState.start` / :meth:`GatewayState.aclose`).
"""

from __future__ import annotations

import gc
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Literal

from starlette.types import Receive, Scope, Send

from gateway.http.auth import authenticate_admin
from gateway.http.exchange import (
    Call,
    ClientGone,
    Reply,
    error_reply,
    new_request_id,
    send_body,
    send_stream,
)
from gateway.http.state import GatewayState
from gateway.kernel.errors import (
    MethodNotAllowedError,
    NotFoundError,
    TiergateError,
    internal_error,
)
from gateway.keys.limiter import Ticket

log = logging.getLogger("tiergate.http")

Access = Literal["client", "admin", "public"]
"""Who may call a route: holders of a client key (open when none is configured), of an admin
key (403 when none is configured), or anyone (health, metrics, the OpenAPI document)."""

Handler = Callable[[Call], Awaitable[Reply]]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One route: a path (``{name}`` matches a segment, ``{name:path}`` the rest), a method and
    its handler."""

    path: str
    method: str
    handler: Handler
    access: Access = "client"
    metered: bool = False
    """A request that serves a model (its body names it): counted against its key's limits."""


def mount(prefix: str, endpoints: Iterable[Endpoint], access: Access) -> list[Endpoint]:
    """``endpoints`` under ``prefix``, all with ``access`` (the admin API's one mount)."""
    return [replace(e, path=prefix + e.path, access=access) for e in endpoints]


_PARAM = re.compile(r"\{(\w+)(:path)?\}")


def _pattern(path: str) -> re.Pattern[str]:
    parts, last = [], 0
    for match in _PARAM.finditer(path):
        parts.append(re.escape(path[last:match.start()]))
        parts.append(f"(?P<{match[1]}>{'.+' if match[2] else '[^/]+'})")
        last = match.end()
    parts.append(re.escape(path[last:]))
    return re.compile("".join(parts) + r"\Z")


class RouteTable:
    """Paths to endpoints by method: static paths by dictionary, the others by pattern."""

    def __init__(self, endpoints: Iterable[Endpoint]) -> None:
        self.static: dict[str, dict[str, Endpoint]] = {}
        self.patterns: list[tuple[re.Pattern[str], dict[str, Endpoint]]] = []
        by_path: dict[str, dict[str, Endpoint]] = {}
        for endpoint in endpoints:
            methods = by_path.setdefault(endpoint.path, {})
            if endpoint.method in methods:
                raise ValueError(f"two routes for {endpoint.method} {endpoint.path}")
            methods[endpoint.method] = endpoint
        for path, methods in by_path.items():
            if _PARAM.search(path):
                self.patterns.append((_pattern(path), methods))
            else:
                self.static[path] = methods

    def match(self, method: str, path: str) -> tuple[Endpoint, dict[str, str]]:
        """The endpoint and path parameters, or :class:`NotFoundError` /
        :class:`MethodNotAllowedError` (with the methods the path allows)."""
        params: dict[str, str] = {}
        methods = self.static.get(path)
        if methods is None:
            for pattern, candidates in self.patterns:
                found = pattern.match(path)
                if found is not None:
                    methods, params = candidates, found.groupdict()
                    break
            else:
                raise NotFoundError(f"Unknown path {path[:200]}")
        endpoint = methods.get(method)
        if endpoint is None:
            if method == "HEAD" and "GET" in methods:
                return methods["GET"], params
            allow = sorted(methods)
            raise MethodNotAllowedError(f"{method[:16]} is not allowed on {path[:200]}",
                                        allow=allow)
        return endpoint, params


class FrontDoor:
    """The gateway's ASGI application (``create_app`` builds it)."""

    def __init__(self, gateway: GatewayState, routes: RouteTable) -> None:
        self.gateway = gateway
        self.routes = routes
        self.max_body_bytes = gateway.settings.server.max_body_bytes
        self._admin_keys = gateway.settings.auth.admin_keys
        self._keys_enabled = gateway.keys.enabled
        """Fixed at start (:attr:`gateway.keys.gate.KeyGate.enabled`)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        # websockets: not served (the server answers 403 to an unanswered upgrade)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = new_request_id()
        started = False  # the answer's status line is out: errors become SSE events
        ticket = None
        try:
            endpoint, params = self.routes.match(scope["method"], scope["path"])
            call = Call(scope, receive, request_id, self.gateway, params,
                        max_body_bytes=self.max_body_bytes)
            if endpoint.access == "client":
                if self._keys_enabled:  # an open gateway: no key to read, nothing to count
                    ticket = await self._admit(endpoint, call)
            elif endpoint.access == "admin":
                call.caller = authenticate_admin(self._admin_keys, call.header(b"authorization"))
            reply = await endpoint.handler(call)
            if reply.stream is None:
                if ticket is not None:  # settled before the answer: the key's next request
                    await self.gateway.keys.release(ticket)  # sees its slot free
                    ticket = None
                await send_body(send, reply, request_id)
                return
            started = True
            if ticket is None:
                await send_stream(send, receive, reply, request_id)
                return
            admitted = ticket

            async def release() -> None:  # before the stream's end reaches the client
                nonlocal ticket
                ticket = None
                await self.gateway.keys.release(admitted)

            await send_stream(send, receive, reply, request_id, release)
        except ClientGone:
            return
        except TiergateError as exc:
            if started:  # a stream's own errors are SSE events; this cannot be answered now
                raise
            await send_body(send, error_reply(exc), request_id)
        except Exception:
            log.exception("request %s failed", request_id)
            if started:
                raise
            await send_body(send, error_reply(internal_error()), request_id)
        finally:
            if ticket is not None:  # a stream cut short, or an error
                await self.gateway.keys.release(ticket)

    async def _admit(self, endpoint: Endpoint, call: Call) -> Ticket | None:
        """The client key and its policy (:class:`gateway.keys.gate.KeyGate`): the caller on
        ``call``, a ticket when the request counts against its key's limits."""
        keys = self.gateway.keys
        caller = await keys.authenticate(call.header(b"authorization"))
        if caller is None:
            return None
        call.caller = caller.id
        if caller.policy.models is not None:
            call.models = frozenset(caller.policy.models)
        try:
            return await keys.admit(caller, endpoint.path, call.request_id,
                                    call.body if endpoint.metered else None)
        except TiergateError as exc:
            if exc.status in (403, 429, 503):  # the policy's refusals (not a bad body's 413)
                self.gateway.telemetry.count_key_refusal(caller.id, exc.code or exc.error_type)
            raise

    @asynccontextmanager
    async def lifespan(self, wait_for_models: bool = True) -> AsyncIterator[None]:
        """The gateway's services running (for tests and embedding without a server: every
        model loaded first; the ASGI lifespan protocol loads them in the background, so that
        the server binds its port at once)."""
        await self.gateway.start(wait_for_models)
        try:
            yield
        finally:
            await self.gateway.aclose()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        message = await receive()
        assert message["type"] == "lifespan.startup"
        try:
            async with self.lifespan(wait_for_models=False):
                await send({"type": "lifespan.startup.complete"})
                _freeze_heap()
                try:
                    message = await receive()
                finally:
                    gc.unfreeze()  # what the gateway built may be collected once it stops
                assert message["type"] == "lifespan.shutdown"
        except BaseException as exc:
            if isinstance(exc, (TiergateError, OSError)):  # a known cause: one line
                log.error("tiergate failed to start or stop: %s", exc)
            else:
                log.exception("tiergate failed to start or stop")
            kind = "shutdown" if message["type"] == "lifespan.shutdown" else "startup"
            await send({"type": f"lifespan.{kind}.failed", "message": str(exc)})
            if not isinstance(exc, Exception):
                raise
            return
        await send({"type": "lifespan.shutdown.complete"})


def _freeze_heap() -> None:
    """Move what the process holds once the gateway has started (modules, settings, routes,
    pydantic schemas: ~60,000 objects) out of the cyclic garbage collector's reach. A full
    collection, which the request path's allocations trigger every few thousand requests, then
    walks only what was allocated since: measured under 32 concurrent requests, the time in
    the collector fell from ~19 to ~10 µs per request (docs/operations.md). Objects freed by
    reference counting are freed as before; :func:`gc.unfreeze` at shutdown hands the rest back.
    The server's lifespan only: tests and embedders that start many gateways in one process
    (:meth:`FrontDoor.lifespan`) are left alone."""
    gc.collect()
    gc.freeze()
