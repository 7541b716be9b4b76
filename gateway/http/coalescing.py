"""One write per response: uvicorn's HTTP protocol on a transport that coalesces the writes of
one event-loop iteration.

uvicorn writes a response in two calls — the status line and headers on
``http.response.start``, then the body — and each ``transport.write`` on a TCP_NODELAY socket
is a segment of its own: two system calls, two passes through the loopback TCP path, and a
client that may wake for the headers alone and sleep again until the body. Here a write is
buffered until the end of the loop iteration it was made in (``loop.call_soon``): a JSON
answer's headers and body, sent back to back by :mod:`gateway.http.exchange`, leave as one segment,
while nothing waits longer than the current iteration (a stream's headers go out at once even
if its first chunk is still to come). ``close`` and ``write_eof`` flush first.

Measured with ``benchmarks/overhead.py``'s sequential pattern, the same gateway with and without
it, interleaved (docs/operations.md): ~60-80 µs off the sequential p50 on this VM.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class CoalescingTransport:
    """Wraps a transport: writes made in one loop iteration reach it as one ``write``."""

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(bytes(data))

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def flush(self) -> None:
        """Hand what is buffered to the transport (dropped if it is closing: the peer left)."""
        pending = self._pending
        if not pending:
            return
        self._pending = []
        if not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending = []
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:  # is_closing, get_extra_info, pause_reading, ...
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, writing through a :class:`CoalescingTransport`."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        wrapped = CoalescingTransport(cast(asyncio.Transport, transport),
                                      asyncio.get_running_loop())
        super().connection_made(wrapped)  # type: ignore[arg-type]
