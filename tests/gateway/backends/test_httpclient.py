"""The lean upstream HTTP client (gateway.backends.httpclient) against raw loopback servers that
answer exactly the bytes each test needs: body framings, keep-alive reuse, a connection the
server closed while idle, the connection limit, timeouts, an unread stream closing its
connection."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from gateway.backends.httpclient import ConnectError, ConnectionClosed, Pool

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head + await reader.readexactly(length)


class Server:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1"


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[Server]]]:
    servers: list[asyncio.Server] = []

    async def start(handler: Handler) -> Server:
        server = Server(handler)
        server.server = await asyncio.start_server(server._serve, "127.0.0.1", 0)
        servers.append(server.server)
        return server

    yield start
    for server in servers:
        server.close()


def keep_alive(body: bytes, extra: bytes = b"", requests: list[bytes] | None = None) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            request = await read_request(reader)
            if requests is not None:
                requests.append(request)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n" + extra
                         + b"content-length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
    return handler


def pool(url: str, limit: int = 8, total: float = 5.0) -> Pool:
    return Pool(url, limit, connect_timeout_s=2.0, total_timeout_s=total,
                headers={"user-agent": "tiergate"})


async def test_content_length_bodies_reuse_one_connection(serve: Callable[..., Awaitable[Server]]
                                                          ) -> None:
    requests: list[bytes] = []
    server = await serve(keep_alive(b'{"ok": true}', requests=requests))
    client = pool(server.url)
    for i in range(3):
        resp = await client.request("POST", "/v1/chat/completions", b'{"n": %d}' % i,
                                    {"x-request-id": f"r{i}"})
        assert resp.status == 200 and resp.content_type == "application/json"
        assert await resp.read() == b'{"ok": true}'
        resp.release()
    assert server.connections == 1
    first = requests[0]
    assert first.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert b"\r\nhost: 127.0.0.1:" in first and b"\r\nuser-agent: tiergate\r\n" in first
    assert b"\r\nx-request-id: r0\r\n" in first and first.endswith(b'\r\n\r\n{"n": 0}')
    await client.aclose()


async def test_chunked_stream_arrives_as_it_is_sent(serve: Callable[..., Awaitable[Server]]
                                                    ) -> None:
    release = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                     b"transfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await writer.drain()
        await release.wait()
        writer.write(b"6\r\nsecond\r\n0\r\n\r\n")
        await writer.drain()
        await reader.read()

    server = await serve(handler)
    client = pool(server.url)
    resp = await client.request("POST", "/v1/chat/completions", b"{}")
    assert resp.content_type == "text/event-stream"
    pieces = resp.iter_any()
    assert await anext(pieces) == b"first"  # before the rest was even sent
    release.set()
    assert [p async for p in pieces] == [b"second"]
    assert resp.complete
    resp.release()
    await client.aclose()


async def test_close_delimited_body(serve: Callable[..., Awaitable[Server]]) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                     b"connection: close\r\n\r\n{\"a\": 1}")
        await writer.drain()

    server = await serve(handler)
    client = pool(server.url)
    resp = await client.request("GET", "/v1/models")
    assert await resp.read() == b'{"a": 1}'
    resp.release()
    resp = await client.request("GET", "/v1/models")  # a new connection: the first was closed
    assert await resp.read() == b'{"a": 1}'
    resp.release()
    assert server.connections == 2
    await client.aclose()


async def test_idle_connection_closed_by_the_server_is_retried_once(
        serve: Callable[..., Awaitable[Server]]) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()  # then closes, as a server's keep-alive timeout would

    server = await serve(handler)
    client = pool(server.url)
    for _ in range(3):
        resp = await client.request("POST", "/v1/completions", b"{}")
        assert await resp.read() == b"ok"
        resp.release()
        await asyncio.sleep(0.05)  # the server's close reaches the pooled connection
    assert server.connections == 3
    await client.aclose()


async def test_connection_limit_queues_requests(serve: Callable[..., Awaitable[Server]]) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            await asyncio.sleep(0.05)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()

    server = await serve(handler)
    client = pool(server.url, limit=2)

    async def call() -> bytes:
        resp = await client.request("POST", "/v1/completions", b"{}")
        try:
            return await resp.read()
        finally:
            resp.release()

    assert await asyncio.gather(*(call() for _ in range(6))) == [b"ok"] * 6
    assert server.connections == 2
    assert client.stats() == {"open": 2, "idle": 2, "waiting": 0}
    await client.aclose()


async def test_unread_stream_closes_its_connection(serve: Callable[..., Awaitable[Server]]
                                                   ) -> None:
    gone = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\none\r\n")
        await writer.drain()
        assert await reader.read() == b""  # the client hung up: the upstream stops
        gone.set()

    server = await serve(handler)
    client = pool(server.url)
    resp = await client.request("POST", "/v1/completions", b"{}")
    assert await anext(resp.iter_any()) == b"one"
    resp.close()
    await asyncio.wait_for(gone.wait(), 5)
    assert client.stats()["open"] == 0
    await client.aclose()


async def test_timeouts_and_failures(serve: Callable[..., Awaitable[Server]]) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(10)

    server = await serve(silent)
    client = pool(server.url, total=0.2)
    with pytest.raises(TimeoutError):
        await client.request("POST", "/v1/completions", b"{}")
    assert client.stats()["open"] == 0

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort")
        await writer.drain()

    broken = pool((await serve(hang_up)).url)
    resp = await broken.request("POST", "/v1/completions", b"{}")
    with pytest.raises(ConnectionClosed):
        await resp.read()
    resp.release()

    with socket.socket() as sock:  # bound, not listening: refuses connections
        sock.bind(("127.0.0.1", 0))
        refused = pool(f"http://127.0.0.1:{sock.getsockname()[1]}/v1")
        with pytest.raises(ConnectError):
            await refused.request("GET", "/v1/models")
    assert refused.stats()["open"] == 0
    with pytest.raises(ValueError):
        Pool("ftp://example.com", 1, 1.0, 1.0)


async def test_first_byte_timeout(serve: Callable[..., Awaitable[Server]]) -> None:
    """Headers that do not come within ``first_byte_timeout_s`` (a wait for a free connection
    included) end the call with ``TimeoutError`` and close its connection; headers in time
    disarm it, however long the body then takes."""
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(10)

    client = pool((await serve(silent)).url, total=10.0)
    with pytest.raises(TimeoutError, match="first-byte"):
        await client.request("POST", "/v1/completions", b"{}", first_byte_timeout_s=0.1)
    assert client.stats()["open"] == 0

    body_later = asyncio.Event()

    async def slow_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
            await writer.drain()
            await body_later.wait()
            writer.write(b"ok")
            await writer.drain()

    limited = pool((await serve(slow_body)).url, limit=1, total=10.0)
    held = await limited.request("POST", "/v1/completions", b"{}", first_byte_timeout_s=0.1)
    with pytest.raises(TimeoutError):  # the one connection is busy past the deadline
        await limited.request("POST", "/v1/completions", b"{}", first_byte_timeout_s=0.1)
    await asyncio.sleep(0.2)  # past the first request's own deadline: its headers disarmed it
    body_later.set()
    assert await held.read() == b"ok"
    held.release()
    assert limited.stats() == {"open": 1, "idle": 1, "waiting": 0}
    await client.aclose()
    await limited.aclose()
