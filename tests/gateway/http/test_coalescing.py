"""The coalescing transport: one write per loop iteration, nothing held past it."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import uvicorn

from gateway.http.coalescing import CoalescingHttpToolsProtocol, CoalescingTransport
from tests.conftest import free_port


class RecordingTransport:
    """What reached the socket, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes]] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.calls.append(("write", data))

    def close(self) -> None:
        self.calls.append(("close", b""))
        self.closing = True

    def abort(self) -> None:
        self.calls.append(("abort", b""))
        self.closing = True

    def write_eof(self) -> None:
        self.calls.append(("write_eof", b""))

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else None


def wrap() -> tuple[CoalescingTransport, RecordingTransport]:
    real = RecordingTransport()
    return CoalescingTransport(real, asyncio.get_running_loop()), real  # type: ignore[arg-type]


async def test_writes_of_one_iteration_leave_as_one() -> None:
    transport, real = wrap()
    transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
    transport.write(memoryview(b"{}"))
    transport.write(b"")
    assert real.calls == []
    assert transport.get_write_buffer_size() == 21
    await asyncio.sleep(0)
    assert real.calls == [("write", b"HTTP/1.1 200 OK\r\n\r\n{}")]
    transport.write(b"data: 1\n\n")  # a later iteration: a write of its own
    await asyncio.sleep(0)
    assert real.calls[1:] == [("write", b"data: 1\n\n")]
    assert transport.get_extra_info("peername") == ("127.0.0.1", 1)


async def test_close_and_write_eof_flush_first_abort_drops() -> None:
    transport, real = wrap()
    transport.writelines([b"a", b"b"])
    transport.write_eof()
    transport.write(b"c")
    transport.close()
    assert real.calls == [("write", b"ab"), ("write_eof", b""), ("write", b"c"), ("close", b"")]
    await asyncio.sleep(0)  # the scheduled flushes find nothing left
    assert len(real.calls) == 4
    transport, real = wrap()
    transport.write(b"lost")
    transport.abort()
    await asyncio.sleep(0)
    assert real.calls == [("abort", b"")]


async def test_a_closing_transport_gets_nothing() -> None:
    transport, real = wrap()
    transport.write(b"late")
    real.closing = True  # the client went away meanwhile
    await asyncio.sleep(0)
    assert real.calls == []


async def test_through_uvicorn_headers_are_not_held_for_a_slow_body() -> None:
    """Through uvicorn: a response whose body comes later has its headers sent at once; one
    sent back to back is answered in full."""
    release = asyncio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain"),
                                                      (b"content-length", b"4")]})
        if scope["path"] == "/slow":
            await release.wait()
        await send({"type": "http.response.body", "body": b"done"})

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off",
                                           http=CoalescingHttpToolsProtocol, log_level="error"))
    serving = asyncio.create_task(server.serve())
    try:
        for _ in range(1000):
            if server.started:
                break
            await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        writer.write(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200") and not release.is_set()
        release.set()
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"done"
        writer.write(b"GET /fast HTTP/1.1\r\nhost: x\r\n\r\n")
        whole = await asyncio.wait_for(reader.readuntil(b"done"), 5)
        assert whole.startswith(b"HTTP/1.1 200") and whole.endswith(b"\r\n\r\ndone")
        writer.close()
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 10)
