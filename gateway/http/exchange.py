"""One HTTP exchange as the routes see it: a :class:`Call` in, a :class:`Reply` out.

Routes never touch ASGI: the front door (:mod:`gateway.http.frontdoor`) builds the call, and
writes the reply — a JSON body in one write, or a stream of server-sent events that stops
(and cancels the work behind it) when the client goes away.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from operator import methodcaller
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import orjson
from starlette.types import Receive, Scope, Send

from gateway.kernel.errors import RequestTooLargeError, TiergateError

if TYPE_CHECKING:
    from gateway.http.state import GatewayState

JSON = b"application/json"
_SSE = ((b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
        (b"x-accel-buffering", b"no"))


def new_request_id() -> str:
    """32 random hex digits, like ``uuid.uuid4().hex`` at a fifth of its cost."""
    return os.urandom(16).hex()


class ClientGone(Exception):
    """The client disconnected before its request body arrived: nothing to answer."""


@dataclass(slots=True)
class Call:
    """One request: what its route needs of the scope, and the gateway it runs in."""

    scope: Scope
    receive: Receive
    request_id: str
    gateway: GatewayState
    path_params: dict[str, str] = field(default_factory=dict)
    caller: str | None = None
    """The authenticated key's id (client or admin key, by the route's access)."""
    models: frozenset[str] | None = None
    """The models and routes the client key may use (its policy's ``models``); None: any."""
    max_body_bytes: int = 0
    _headers: dict[bytes, bytes] | None = None
    _body: bytes | None = None

    def header(self, name: bytes) -> str | None:
        """A request header by its lower-case name (the last, if sent several times)."""
        headers = self._headers
        if headers is None:
            headers = self._headers = dict(self.scope["headers"])
        value = headers.get(name)
        return None if value is None else value.decode("latin-1")

    def query(self) -> dict[str, str]:
        return dict(parse_qsl(self.scope.get("query_string", b"").decode("latin-1")))

    async def body(self, limit: int | None = None) -> bytes:
        """The whole request body, refused with 413 past ``limit`` (default: the server's
        ``max_body_bytes``) — by its declared length before a byte is read. Read once: a
        second call (the route, after the front door's key policy) gets the same bytes."""
        if self._body is not None:
            return self._body
        if limit is None:
            limit = self.max_body_bytes
        declared = self.header(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise RequestTooLargeError(f"Request body of {declared} bytes exceeds {limit} bytes.")
        message = await self.receive()
        if message["type"] != "http.request":
            raise ClientGone
        body: bytes = message.get("body", b"")
        if not message.get("more_body", False):
            if len(body) > limit:
                raise RequestTooLargeError(f"Request body exceeds {limit} bytes.")
            self._body = body
            return body
        chunks, size = [body], len(body)
        while True:
            message = await self.receive()
            if message["type"] != "http.request":
                raise ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise RequestTooLargeError(f"Request body exceeds {limit} bytes.")
            chunks.append(chunk)
            if not message.get("more_body", False):
                self._body = b"".join(chunks)
                return self._body


@dataclass(slots=True)
class Reply:
    """What a route answers: ``body`` (bytes, ``media_type``) or ``stream`` (SSE bytes)."""

    body: bytes = b""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    media_type: bytes = JSON
    stream: AsyncIterator[bytes] | None = None


def json_reply(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Reply:
    return Reply(orjson.dumps(content), status, headers or {})


def error_reply(exc: TiergateError) -> Reply:
    """The OpenAI-shaped answer to an error (:meth:`TiergateError.body`, its headers)."""
    return Reply(orjson.dumps(exc.body()), exc.status, exc.headers())


_LATIN_1 = methodcaller("encode", "latin-1")


def _raw_headers(headers: dict[str, str], request_id: str) -> list[tuple[bytes, bytes]]:
    # names and values encoded by map/zip in C: no Python frame per header
    raw = list(zip(map(_LATIN_1, headers), map(_LATIN_1, headers.values()), strict=True))
    raw.append((b"x-request-id", request_id.encode()))
    return raw


async def send_body(send: Send, reply: Reply, request_id: str) -> None:
    """A whole answer: headers and body back to back (one segment on the wire, see
    :mod:`gateway.http.coalescing`)."""
    raw = _raw_headers(reply.headers, request_id)
    raw.append((b"content-type", reply.media_type))
    raw.append((b"content-length", b"%d" % len(reply.body)))
    await send({"type": "http.response.start", "status": reply.status, "headers": raw})
    await send({"type": "http.response.body", "body": reply.body})


async def send_stream(send: Send, receive: Receive, reply: Reply, request_id: str,
                      before_end: Callable[[], Awaitable[None]] | None = None) -> None:
    """Server-sent events as they come. A client that disconnects cancels the stream (and with
    it the work behind it, e.g. the upstream call): the watcher belongs to the response.
    ``before_end`` runs once the last event is out, before the response ends: what it settles
    (a key's concurrency slot) is settled when the client sees the end."""
    assert reply.stream is not None
    events = reply.stream
    raw = _raw_headers(reply.headers, request_id)
    raw.extend(_SSE)
    await send({"type": "http.response.start", "status": reply.status, "headers": raw})
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
        if before_end is not None:
            await before_end()
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
