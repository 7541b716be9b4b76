"""The completion endpoints as a raw ASGI app: the request hot path.

``/v1/chat/completions`` and ``/v1/completions`` are answered here, straight from the ASGI scope,
``receive`` and ``send`` (:class:`gateway.app.TiergateApp` hands them over before Starlette sees
them); every other path goes to Starlette (admin API, models, health, metrics).

Why: measured with ``benchmarks/overhead.py``, Starlette's layers (error and exception
middleware, the router, ``Request`` and ``Response`` objects, the anyio task group a
``StreamingResponse`` opens to watch for disconnects) were a large share of the gateway's CPU per
request (see docs/operations.md). What a client sees is what the Starlette routes sent: the same
headers (``content-type``, ``x-request-id``, ``x-tiergate-*``), OpenAI-shaped errors (400, 401,
404, 405, 413, 5xx, never a traceback), SSE error events once a stream has started, and a client
that disconnects mid-stream cancels the upstream call.

Thin like every route: read and parse the body, authorize, call the serving object, serialize.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator

import orjson
from starlette.types import Receive, Scope, Send

from gateway import protocol
from gateway.errors import (
    MethodNotAllowedError,
    RequestTooLargeError,
    TiergateError,
    internal_error,
)
from gateway.routes import parse
from gateway.serving import OpenAIServing, RequestContext, Served
from gateway.state import GatewayState

log = logging.getLogger("tiergate.app")

COMPLETION_PATHS: dict[str, type[protocol.OpenAIRequest]] = {
    "/v1/chat/completions": protocol.ChatCompletionRequest,
    "/v1/completions": protocol.CompletionRequest,
}
_JSON = (b"content-type", b"application/json")
_SSE = ((b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
        (b"x-accel-buffering", b"no"))
_WANTED = frozenset((b"authorization", b"content-length", b"traceparent", b"tracestate"))


def new_request_id() -> str:
    """32 random hex digits, like ``uuid.uuid4().hex`` at a fifth of its cost."""
    return os.urandom(16).hex()


class ClientGone(Exception):
    """The client disconnected before its request body arrived: nothing to answer."""


def _raw_headers(headers: dict[str, str], request_id: str) -> list[tuple[bytes, bytes]]:
    raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    raw.append((b"x-request-id", request_id.encode()))
    return raw


async def send_json(send: Send, status: int, body: bytes, headers: dict[str, str],
                    request_id: str) -> None:
    raw = _raw_headers(headers, request_id)
    raw.append(_JSON)
    raw.append((b"content-length", b"%d" % len(body)))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class CompletionsApp:
    """ASGI app of the paths in :data:`COMPLETION_PATHS` (HTTP scopes only)."""

    def __init__(self, state: GatewayState) -> None:
        self.gateway = state
        self.serving: OpenAIServing = state.serving
        self.max_body_bytes = state.settings.server.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        model = COMPLETION_PATHS[scope["path"]]
        request_id = new_request_id()
        started = False  # the response's status line is out: errors become SSE events
        try:
            if scope["method"] != "POST":
                raise MethodNotAllowedError(f"{scope['method']} is not allowed on {scope['path']}")
            served = await self._serve(scope, receive, model, request_id)
            if served.stream is None:
                await send_json(send, 200, orjson.dumps(served.body), served.headers, request_id)
                return
            raw = _raw_headers(served.headers, request_id)
            raw.extend(_SSE)
            started = True
            await send({"type": "http.response.start", "status": 200, "headers": raw})
            await self._stream(served.stream, receive, send)
        except ClientGone:
            return
        except TiergateError as exc:
            if started:  # the stream's own errors are SSE events; this cannot be answered now
                raise
            await send_json(send, exc.status, orjson.dumps(exc.body()), exc.headers(), request_id)
        except Exception:
            log.exception("request %s failed", request_id)
            if started:
                raise
            error = internal_error()
            await send_json(send, error.status, orjson.dumps(error.body()), error.headers(),
                            request_id)

    async def _serve(self, scope: Scope, receive: Receive, model: type[protocol.OpenAIRequest],
                     request_id: str) -> Served:
        headers: dict[bytes, str] = {}
        for name, value in scope["headers"]:
            if name in _WANTED:
                headers[name] = value.decode("latin-1")
        caller = self.gateway.auth.authenticate(headers.get(b"authorization"))
        body = await self._read_body(receive, headers.get(b"content-length"))
        parsed = parse(model, body)
        trace = {}
        if b"traceparent" in headers:
            trace["traceparent"] = headers[b"traceparent"]
        if b"tracestate" in headers:
            trace["tracestate"] = headers[b"tracestate"]
        ctx = RequestContext(request_id=request_id, caller=caller, trace_headers=trace,
                             operation=scope["path"])
        return await self.serving.create(parsed, ctx)

    async def _read_body(self, receive: Receive, declared: str | None) -> bytes:
        limit = self.max_body_bytes
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise RequestTooLargeError(f"Request body of {declared} bytes exceeds {limit} bytes.")
        message = await receive()
        if message["type"] != "http.request":
            raise ClientGone
        body: bytes = message.get("body", b"")
        if not message.get("more_body", False):
            if len(body) > limit:
                raise RequestTooLargeError(f"Request body exceeds {limit} bytes.")
            return body
        chunks, size = [body], len(body)
        while True:
            message = await receive()
            if message["type"] != "http.request":
                raise ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise RequestTooLargeError(f"Request body exceeds {limit} bytes.")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _stream(self, events: AsyncIterator[bytes], receive: Receive, send: Send) -> None:
        """Send the SSE bytes as they come; a client that disconnects cancels the stream (and
        with it the upstream call)."""
        task = asyncio.current_task()
        assert task is not None
        gone = False

        async def watch() -> None:
            nonlocal gone
            while (await receive())["type"] != "http.disconnect":
                pass
            gone = True
            task.cancel()

        watcher = asyncio.ensure_future(watch())
        try:
            async for data in events:
                await send({"type": "http.response.body", "body": data, "more_body": True})
            watcher.cancel()  # the last send completes the response: receive() says disconnect
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not gone:
                raise  # the server is stopping, not the client leaving
            task.uncancel()
        finally:
            watcher.cancel()
            close = getattr(events, "aclose", None)
            if close is not None:
                await close()
