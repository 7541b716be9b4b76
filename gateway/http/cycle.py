"""uvicorn's request-response cycle with the response head written by a few calls in C.

uvicorn's ``send`` writes a response's status line and headers in a Python loop: per header,
two regular-expression searches, a lower-casing, three comparisons and a list extension — about
30 Python opcodes a header, some 500 of a JSON answer's (the gateway sends 15-20 headers:
``date`` and ``server``, the request id, the content's, rate limits, the cost). Here the same
checks run once over all of them: the names joined and searched once with uvicorn's own
``HEADER_RE``, the values with its ``HEADER_VALUE_RE`` (a character-class search finds a bad
byte in the joined bytes exactly when it finds it in one of them), names lower-cased and the
lines formatted by ``map``. What a head needs of the cycle's state (``content-length``, the
chunked encoding, ``connection: close``) is set as uvicorn sets it.

Only the common head takes this path: a head with a ``connection`` or ``transfer-encoding``
header, an invalid name or value, a ``content-length`` that is not a number, a status without a
status line, the access log on, a paused or closed connection — every one of them goes to
uvicorn's own ``send``, which answers it as it always has (its errors included). So the bytes
written and the state left are uvicorn's in every case; ``tests/gateway/http/test_cycle.py``
compares them, head by head, with uvicorn's. Bodies are uvicorn's own path.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    RequestResponseCycle,
)

if TYPE_CHECKING:
    from uvicorn._types import ASGISendEvent, HTTPResponseStartEvent

_HEADER_LINE = b"%s: %s\r\n".__mod__
_NO_BODY_STATUS = (204, 304)


async def _written() -> None:
    """What awaiting a head written at once awaits: nothing."""


class ResponseCycle(RequestResponseCycle):
    """One request's cycle on a :class:`~gateway.http.connection.GatewayHttpProtocol`."""

    def send(self, message: ASGISendEvent) -> Coroutine[Any, Any, None]:
        """uvicorn's ``send`` (its coroutine, returned: no frame of ours on a body's way) unless
        ``message`` is a common head, written here."""
        if message["type"] == "http.response.start" and self._write_head(message):
            return _written()
        return RequestResponseCycle.send(self, message)

    def _write_head(self, message: HTTPResponseStartEvent) -> bool:
        """Write ``message``'s head as uvicorn would; False (nothing done) where it is not the
        common case (see the module), for uvicorn's ``send`` to answer."""
        if (self.response_started or self.disconnected or self.flow.write_paused
                or self.access_log):
            return False
        status = message["status"]
        status_line = STATUS_LINE.get(status)
        headers = self.default_headers + list(message.get("headers", []))
        if status_line is None or not headers:
            return False
        try:
            names, values = zip(*headers, strict=True)
            if HEADER_RE.search(b"".join(names)) or HEADER_VALUE_RE.search(b"".join(values)):
                return False
        except (TypeError, ValueError):  # not pairs of bytes: uvicorn's own error
            return False
        lowered = list(map(bytes.lower, names))
        if b"connection" in lowered or b"transfer-encoding" in lowered:
            return False
        tail = []
        if b"content-length" in lowered:
            value = values[lowered.index(b"content-length")]
            if not value.isdigit():
                return False
            self.expected_content_length = int(value)
            self.chunked_encoding = False
        if not self.keep_alive:
            tail.append(b"connection: close\r\n")
        if (self.chunked_encoding is None and self.scope["method"] != "HEAD"
                and status not in _NO_BODY_STATUS):
            self.chunked_encoding = True
            tail.append(b"transfer-encoding: chunked\r\n")
        tail.append(b"\r\n")
        self.response_started = True
        self.waiting_for_100_continue = False
        lines = map(_HEADER_LINE, zip(lowered, values, strict=True))
        self.transport.write(b"".join((status_line, *lines, *tail)))
        return True
