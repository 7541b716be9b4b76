"""A lean HTTP/1.1 client for upstreams: pooled keep-alive connections on asyncio protocols,
responses parsed by ``httptools`` (the parser uvicorn uses).

Why not aiohttp's client: measured with a pass-through proxy on this path, one aiohttp request
costs ~0.27 ms of CPU (request and response objects, header multidicts, timers, payload
writers), this client ~0.03 ms; that was a third of tiergate's whole per-request cost
(``benchmarks/overhead.py``, docs/operations.md). It does what an upstream call needs and no
more: ``POST``/``GET`` with a body, ``Content-Length`` / chunked / close-delimited responses,
streaming reads as the bytes arrive, TLS for ``https`` upstreams, a connection limit, connect
and whole-call timeouts (``TimeoutError``), and a connection closed (not reused) when its
response was not read to the end, which cancels the upstream's work.

Errors: :class:`ConnectError` (the upstream cannot be reached) and :class:`ConnectionClosed`
(the connection broke mid-call) — both :class:`ClientError`; the backend maps them at its
boundary. A request on a reused keep-alive connection that the upstream had closed meanwhile
is sent again once on a new connection (nothing of it reached the upstream).
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from collections.abc import AsyncIterator
from typing import Any, cast
from urllib.parse import urlsplit

import httptools

IDLE_CLOSE_S = 30.0
"""A pooled connection idle this long is closed rather than reused."""
PAUSE_ABOVE = 1 << 20
"""Stop reading from the upstream while this many bytes wait for the reader."""


class ClientError(Exception):
    """A failure of the HTTP exchange itself (not an HTTP error status)."""


class ConnectError(ClientError):
    """The upstream could not be connected to."""

    def __init__(self, message: str, os_error: OSError | None = None) -> None:
        super().__init__(message)
        self.os_error = os_error


class ConnectionClosed(ClientError):
    """The connection broke before the response was complete."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection; serves one response at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0
        self.response: Response | None = None
        self.reused = False

    # -- protocol callbacks --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None:  # bytes nobody asked for: this connection is not reusable
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            response._fail(ConnectionClosed(f"invalid HTTP response: {exc}"))
            self.close()
            return
        response._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        response = self.response
        if response is not None:
            if response.headers_done and not response.length_known:
                response._finish()  # a close-delimited body ends here
            else:
                response._fail(ConnectionClosed("the upstream closed the connection"
                                                + (f": {exc}" if exc else "")))

    def pause_writing(self) -> None:  # request bodies are small: nothing to pause
        pass

    # -- parser callbacks ----------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.response is not None
        self.response.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        response = self.response
        assert response is not None
        response.status = self.parser.get_status_code()
        headers = response.headers
        response.length_known = ("content-length" in headers
                                 or "chunked" in headers.get("transfer-encoding", "").lower())
        response.headers_done = True
        if response._first_byte is not None:
            response._first_byte.cancel()
            response._first_byte = None

    def on_body(self, body: bytes) -> None:
        assert self.response is not None
        self.response._pending.append(body)

    def on_message_complete(self) -> None:
        response = self.response
        assert response is not None
        response.keep_alive = self.parser.should_keep_alive()
        response._finish()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()


class Response:
    """An upstream's response: ``status`` and ``headers`` (lower-case names), then the body
    with :meth:`read` or :meth:`iter_any`. Give it back with :meth:`release` (a body read to the
    end: the connection is reused) or :meth:`close` (the connection is closed)."""

    def __init__(self, pool: Pool, connection: _Connection) -> None:
        self._pool = pool
        self._connection = connection
        self.status = 0
        self.headers: dict[str, str] = {}
        self.headers_done = False
        self.length_known = False
        self.keep_alive = False
        self._pending: list[bytes] = []
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._paused = False
        self._done = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._first_byte: asyncio.TimerHandle | None = None
        self._released = False
        self._streaming = False

    @property
    def complete(self) -> bool:
        """The whole body has arrived."""
        return self._done

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").partition(";")[0].strip().lower()

    # -- fed by the connection -----------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _flush(self) -> None:
        """Body pieces of one ``data_received`` become one chunk for the reader."""
        if self._pending:
            data = b"".join(self._pending) if len(self._pending) > 1 else self._pending[0]
            self._pending.clear()
            self._chunks.append(data)
            self._buffered += len(data)
            if (self._streaming and self._buffered > PAUSE_ABOVE and not self._paused
                    and not self._done):
                transport = self._connection.transport
                if transport is not None:
                    self._paused = True
                    transport.pause_reading()
        if self.headers_done or self._done or self._error is not None:
            self._wake()

    def _finish(self) -> None:
        self._done = True
        self._flush()
        self._cancel_timer()
        self._wake()

    def _fail(self, error: BaseException) -> None:
        if not self._done and self._error is None:
            self._error = error
            self._cancel_timer()
            self._wake()

    def _timed_out(self) -> None:
        self._timer = None
        self._fail(TimeoutError("the upstream call exceeded its total timeout"))
        self._connection.close()

    def _no_first_byte(self) -> None:
        self._first_byte = None
        self._fail(TimeoutError("no response headers within the first-byte timeout"))
        self._connection.close()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._first_byte is not None:
            self._first_byte.cancel()
            self._first_byte = None

    # -- read by the caller --------------------------------------------------------------------

    async def _wait(self) -> None:
        waiter = self._waiter = self._connection.loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    async def _headers(self) -> None:
        while not self.headers_done:
            if self._error is not None:
                raise self._error
            await self._wait()

    async def read(self) -> bytes:
        """The whole body."""
        while not self._done:
            if self._error is not None:
                raise self._error
            await self._wait()
        data = b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        return data

    async def iter_any(self) -> AsyncIterator[bytes]:
        """The body as it arrives: everything received at once comes as one piece."""
        self._streaming = True
        chunks = self._chunks
        while True:
            if chunks:
                data = chunks.popleft()
                self._buffered -= len(data)
                if self._paused and self._buffered <= PAUSE_ABOVE // 4:
                    self._paused = False
                    transport = self._connection.transport
                    if transport is not None and not self._connection.closed:
                        transport.resume_reading()
                yield data
            elif self._done:
                return
            elif self._error is not None:
                raise self._error
            else:
                await self._wait()

    def release(self) -> None:
        """Done with the response: its connection goes back to the pool if the body was read
        to the end and the upstream keeps it alive, else it is closed."""
        if self._released:
            return
        self._released = True
        self._cancel_timer()
        connection = self._connection
        connection.response = None
        if self._done and self.keep_alive and not connection.closed:
            self._pool._put(connection)
        else:
            connection.close()
            self._pool._forget()

    def close(self) -> None:
        """Done with the response, whatever was read: the connection is closed (an upstream
        still generating stops)."""
        if not self._released:
            self._connection.close()
            self.release()


class Pool:
    """Keep-alive connections to one upstream origin (``scheme://host:port``)."""

    def __init__(self, base_url: str, limit: int, connect_timeout_s: float,
                 total_timeout_s: float, headers: dict[str, str] | None = None) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl: ssl.SSLContext | None = (ssl.create_default_context()
                                           if parts.scheme == "https" else None)
        default_port = self.port == (443 if self.ssl else 80)
        host_header = self.host if default_port else f"{self.host}:{self.port}"
        if ":" in self.host:  # an IPv6 literal
            host_header = f"[{self.host}]" if default_port else f"[{self.host}]:{self.port}"
        fixed = {"host": host_header, **(headers or {})}
        self._fixed = "".join(f"{k}: {v}\r\n" for k, v in fixed.items()).encode("latin-1")
        self.limit = limit
        self.connect_timeout_s = connect_timeout_s
        self.total_timeout_s = total_timeout_s
        self._idle: list[_Connection] = []
        self._open = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._closed = False

    # -- connections ---------------------------------------------------------------------------

    async def _acquire(self, deadline: float | None = None) -> _Connection:
        """A connection: an idle one, a new one, or (at the limit) the next one given back —
        waiting for it and connecting both end with ``TimeoutError`` at ``deadline`` (loop
        time), if given."""
        now = time.monotonic()
        idle = self._idle
        while idle:
            connection = idle.pop()
            if not connection.closed and now - connection.idle_since < IDLE_CLOSE_S:
                connection.reused = True
                return connection
            connection.close()
            self._forget()
        while self._open >= self.limit:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout_at(deadline):
                    await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
            if idle:
                return await self._acquire(deadline)
        self._open += 1
        try:
            return await self._connect(deadline)
        except BaseException:
            self._forget()
            raise

    async def _connect(self, deadline: float | None = None) -> _Connection:
        """A new connection within ``connect_timeout_s`` (:class:`ConnectError` past it), and
        before ``deadline`` (``TimeoutError`` past it, when it comes first)."""
        if self._closed:
            raise ConnectError("the client is closed")
        loop = asyncio.get_running_loop()
        connect_by = loop.time() + self.connect_timeout_s
        if deadline is not None and deadline < connect_by:
            async with asyncio.timeout_at(deadline):
                return await self._connect_by(loop, connect_by)
        return await self._connect_by(loop, connect_by)

    async def _connect_by(self, loop: asyncio.AbstractEventLoop, when: float) -> _Connection:
        try:
            async with asyncio.timeout_at(when):
                _, connection = await loop.create_connection(
                    lambda: _Connection(loop), self.host, self.port, ssl=self.ssl,
                    server_hostname=self.host if self.ssl else None)
        except OSError as exc:
            raise ConnectError(f"cannot connect to {self.host}:{self.port}: {exc}", exc) from exc
        return connection

    def _put(self, connection: _Connection) -> None:
        if self._closed:
            connection.close()
            self._forget()
            return
        connection.idle_since = time.monotonic()
        self._idle.append(connection)
        self._wake_one()

    def _forget(self) -> None:
        self._open -= 1
        self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    # -- requests ------------------------------------------------------------------------------

    async def request(self, method: str, target: str, body: bytes = b"",
                      headers: dict[str, str] | None = None,
                      first_byte_timeout_s: float | None = None) -> Response:
        """Send a request (``target``: the path and query) and wait for the response headers:
        ``TimeoutError`` if they are not there ``first_byte_timeout_s`` after the call (a wait
        for a free connection included; two timer handles rather than ``asyncio.timeout``,
        a fifth of its cost). The caller must :meth:`Response.release` or
        :meth:`Response.close` it."""
        head = [f"{method} {target} HTTP/1.1\r\n".encode("latin-1"), self._fixed]
        if headers:
            head.append("".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode("latin-1"))
        head.append(b"content-length: %d\r\n\r\n" % len(body))
        message = b"".join(head) + body
        deadline = None
        if first_byte_timeout_s is not None:
            deadline = asyncio.get_running_loop().time() + first_byte_timeout_s
        for attempt in (1, 2):
            connection = await self._acquire(deadline)
            response = Response(self, connection)
            connection.response = response
            connection.parser = httptools.HttpResponseParser(connection)
            loop = connection.loop
            response._timer = loop.call_later(self.total_timeout_s, response._timed_out)
            if deadline is not None:
                response._first_byte = loop.call_at(deadline, response._no_first_byte)
            assert connection.transport is not None
            try:
                connection.transport.write(message)
                await response._headers()
            except ConnectionClosed:
                retry = connection.reused and attempt == 1 and not response.headers_done
                response.close()
                if retry:
                    continue
                raise
            except BaseException:
                response.close()
                raise
            return response
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        self._closed = True
        for connection in self._idle:
            connection.close()
        self._idle.clear()

    def stats(self) -> dict[str, Any]:
        return {"open": self._open, "idle": len(self._idle), "waiting": len(self._waiters)}
