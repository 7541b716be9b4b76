"""One client connection: uvicorn's httptools protocol, writing through
:mod:`gateway.http.coalescing`, with the edge limits a hostile client cannot get past.

uvicorn bounds none of a request's head: its keep-alive timer is cancelled by the first byte
and nothing replaces it, so a client sending a header byte every few seconds holds its
connection (and a file descriptor) forever (slowloris); a header may be any size, and httptools
joins one that arrives in many reads by concatenation, so its cost grows with the square of its
size. And a request it cannot parse gets a plain-text 400. Here (``[server]`` settings):

- the **head** must arrive within ``header_timeout_s`` of the connection's start (first request)
  or of its first byte (later ones), the **body** within ``body_timeout_s`` of the head's end;
  past it: 408, or a silent close for a connection that sent nothing;
- more than ``max_header_count`` headers, or more than ``max_header_bytes`` of names and values:
  431; the count is checked at the end of each read a head spans and once the head is complete
  (a read holds at most one read's worth of headers in between), the bytes as the head's reads
  arrive (``max_head_bytes`` over all reads after its first) and exactly once it is complete
  (only when its reads could hold that many);
- a request target longer than ``max_url_bytes``: 414;
- anything llhttp refuses (Content-Length with Transfer-Encoding, a negative length, control
  characters, ...): 400.

Every refusal is an OpenAI-shaped JSON error (:mod:`gateway.kernel.errors`) sent with
``connection: close``; the connection then stops parsing, discards what still arrives for
``LINGER_S`` (so the client reads the answer instead of a reset) and closes. A response already
under way on the connection (HTTP pipelining) is cut instead of answered into.

Cost on the request path: a few attribute writes and length checks per request, and
a timer only for a head or body that does not arrive in the read it started in.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import httptools
import orjson
from uvicorn.protocols.http.flow_control import service_unavailable
from uvicorn.protocols.http.httptools_impl import STATUS_LINE

from gateway.http.coalescing import CoalescingHttpToolsProtocol
from gateway.http.cycle import ResponseCycle
from gateway.kernel.errors import InvalidRequestError

if TYPE_CHECKING:
    from gateway.settings import ServerSettings

logger = logging.getLogger(__name__)

LINGER_S = 2.0
"""How long a refused connection keeps reading (and discarding) before it closes."""

# Where a connection is in its current request.
_IDLE, _HEAD, _BODY, _CLOSING = 0, 1, 2, 3


@dataclass(frozen=True, slots=True)
class EdgeLimits:
    """The ``[server]`` limits every connection enforces (plain data: pickled to workers)."""

    header_timeout_s: float
    body_timeout_s: float
    max_header_count: int
    max_header_bytes: int
    max_url_bytes: int

    @classmethod
    def from_settings(cls, server: ServerSettings) -> EdgeLimits:
        return cls(server.header_timeout_s, server.body_timeout_s, server.max_header_count,
                   server.max_header_bytes, server.max_url_bytes)

    @property
    def max_head_bytes(self) -> int:
        """Bytes past which a head still incomplete is refused: the target, the headers, and
        room for the request line and each field's separators."""
        return self.max_url_bytes + self.max_header_bytes + 8 * self.max_header_count + 1024


class EdgeRefusal(Exception):
    """A request refused at the edge: its status and the OpenAI error a client reads."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.error = InvalidRequestError(message, code=code)


def refusal_bytes(refusal: EdgeRefusal, default_headers: list[tuple[bytes, bytes]]) -> bytes:
    """The whole HTTP response for ``refusal``, closing the connection."""
    body = orjson.dumps(refusal.error.body())
    head = [STATUS_LINE[refusal.status]]
    for name, value in default_headers:
        head += [name, b": ", value, b"\r\n"]
    head += [b"content-type: application/json\r\ncontent-length: ", str(len(body)).encode(),
             b"\r\nconnection: close\r\n\r\n", body]
    return b"".join(head)


class GatewayHttpProtocol(CoalescingHttpToolsProtocol):
    """The gateway's HTTP/1.1 connection: coalesced writes, bounded heads and bodies, JSON
    errors. Built by uvicorn through :func:`protocol_factory`."""

    def __init__(self, *args: Any, limits: EdgeLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self._max_head_bytes = limits.max_head_bytes
        self._max_header_count = limits.max_header_count
        self._phase = _IDLE
        self._messages = 0  # requests begun on this connection
        self._max_header_bytes = limits.max_header_bytes
        self._max_url_bytes = limits.max_url_bytes
        self._head_bytes = 0  # bytes of the current head read after its first read
        self._read_bytes = 0  # bytes of the read being parsed
        self._head_first_read = 0  # bytes of the read the current head began in
        self._timer: asyncio.TimerHandle | None = None  # head, body or linger deadline

    # The connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._timer = self.loop.call_later(self.limits.header_timeout_s, self._deadline)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self._phase = _CLOSING
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """uvicorn's, with the refusals answered in JSON and the head's and body's deadlines
        armed when they span reads."""
        if self._phase == _CLOSING:
            return  # refused: what still arrives is discarded
        self._unset_keepalive_if_required()
        begun = self._messages
        self._read_bytes = len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, EdgeRefusal):
                self._refuse(cause)
            else:  # uvicorn could not take the head (e.g. a path that is not ASCII)
                self._refuse(_malformed("the request head could not be read"))
            return
        except httptools.HttpParserError as exc:
            self._refuse(_malformed(str(exc)[:200]))
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self._cancel_timer()
                self.handle_websocket_upgrade()
                return
            self._unsupported_upgrade_warning()
        phase = self._phase
        if phase == _HEAD:
            if self._messages == begun:  # the whole read belongs to this head
                self._head_bytes += len(data)
                if self._head_bytes > self._max_head_bytes:
                    self._refuse(_too_large_head())
                    return
            if len(self.headers) > self._max_header_count:
                self._refuse(_too_large_head())
                return
            if self._timer is None:
                self._timer = self.loop.call_later(self.limits.header_timeout_s, self._deadline)
        elif phase == _BODY and self._timer is None:
            self._timer = self.loop.call_later(self.limits.body_timeout_s, self._deadline)

    def send_400_response(self, msg: str) -> None:
        self._refuse(_malformed(msg))

    def _unsupported_upgrade_warning(self) -> None:
        # uvicorn warns twice per request: a log any client could flood.
        logger.debug("Upgrade request from %s ignored: no upgrade is served", self.client)

    # Parser callbacks

    def on_message_begin(self) -> None:
        """uvicorn's, inlined (once per request), and the head's accounting reset."""
        self.url = b""
        self.expect_100_continue = False
        headers: list[tuple[bytes, bytes]] = []
        self.headers = headers
        self.scope = {  # type: ignore[typeddict-item]
            "type": "http",
            "asgi": {"version": self.asgi_version, "spec_version": "2.3"},
            "http_version": "1.1",
            "server": self.server,
            "client": self.client,
            "scheme": self.scheme,  # type: ignore[typeddict-item]
            "root_path": self.root_path,
            "headers": headers,
            "state": self.app_state.copy(),
        }
        self._phase = _HEAD
        self._messages += 1
        self._head_bytes = 0
        self._head_first_read = self._read_bytes

    def on_url(self, url: bytes) -> None:
        if self.url:  # a target that arrived in several reads
            url = self.url + url
        if len(url) > self._max_url_bytes:
            raise EdgeRefusal(414, f"The request target exceeds {self._max_url_bytes} "
                                   "bytes.", "uri_too_long")
        self.url = url

    def on_header(self, name: bytes, value: bytes) -> None:
        """uvicorn's, inlined (the per-header path); the count and bytes of the headers are
        checked at the end of each read the head spans and once it is complete, not here."""
        name = name.lower()
        value = value.rstrip(b" \t")  # llhttp keeps trailing whitespace (RFC 9110 5.5)
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self._timer is not None:
            self._cancel_timer()
        # Every read this head spans, an upper bound of its size: most heads come in one read
        # far below the limit, and their headers need no sum.
        limit, headers = self._max_header_bytes, self.headers
        if len(headers) > self._max_header_count or \
                (self._head_first_read + self._head_bytes + self._read_bytes > limit and \
                sum(len(name) + len(value) for name, value in headers) > limit):
            raise _too_large_head()
        self._start_cycle()
        self._phase = _BODY  # after: a head it cannot take is refused as a head

    def _start_cycle(self) -> None:
        """uvicorn's ``on_headers_complete``, inlined, with the cycle a :class:`ResponseCycle`
        (its response heads written in C, :mod:`gateway.http.cycle`)."""
        parser, scope = self.parser, self.scope
        http_version = parser.get_http_version()
        scope["method"] = parser.get_method().decode("ascii")
        if http_version != "1.1":
            scope["http_version"] = http_version
        if parser.should_upgrade() and self._should_upgrade():
            return
        parsed_url = httptools.parse_url(self.url)
        raw_path = parsed_url.path
        path = raw_path.decode("ascii")
        if "%" in path:
            path = urllib.parse.unquote(path)
        scope["path"] = self.root_path + path
        scope["raw_path"] = self.root_path.encode("ascii") + raw_path
        scope["query_string"] = parsed_url.query or b""
        app: Any = self.app
        limit = self.limit_concurrency
        if limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit):
            app = service_unavailable
            self.logger.warning("Exceeded concurrency limit.")
        existing = self.cycle
        self.cycle = cycle = ResponseCycle(
            scope=scope, transport=self.transport, flow=self.flow, logger=self.logger,
            access_logger=self.access_logger, access_log=self.access_log,
            default_headers=self.server_state.default_headers, message_event=asyncio.Event(),
            expect_100_continue=self.expect_100_continue,
            keep_alive=http_version != "1.0" and parser.should_keep_alive(),
            on_response=self.on_response_complete)
        if existing is None or existing.response_complete:
            self._start_asgi_task(cycle, app)
        else:  # pipelined: queued behind the response under way
            self.flow.pause_reading()
            self.pipeline.appendleft((cycle, app))

    def on_message_complete(self) -> None:
        if self._timer is not None:
            self._cancel_timer()
        self._phase = _IDLE
        super().on_message_complete()

    # Deadlines and refusals

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _deadline(self) -> None:
        """The current phase ran out of time."""
        self._timer = None
        phase = self._phase
        if phase == _CLOSING or self.transport.is_closing():
            self.transport.close()
        elif self.flow.read_paused:  # the gateway stopped reading: not the client's delay
            wait = self.limits.header_timeout_s if phase == _HEAD else self.limits.body_timeout_s
            self._timer = self.loop.call_later(wait, self._deadline)
        elif phase == _IDLE:  # nothing of a request arrived: nothing to answer
            self._phase = _CLOSING
            self.transport.close()
        elif phase == _HEAD:
            self._refuse(EdgeRefusal(408, "The request head did not arrive within "
                                          f"{self.limits.header_timeout_s:g} s.",
                                     "request_timeout"))
        else:
            self._refuse(EdgeRefusal(408, "The request body did not arrive within "
                                          f"{self.limits.body_timeout_s:g} s.",
                                     "request_timeout"))

    def _refuse(self, refusal: EdgeRefusal) -> None:
        """Answer ``refusal`` and close after a short linger; with a response under way on
        this connection, close at once instead (answering would write into it)."""
        logger.debug("Refused %s: %d %s", self.client, refusal.status, refusal)
        self._cancel_timer()
        cycle = self.cycle
        if self._phase == _BODY:
            may_answer = cycle is not None and not self.pipeline and not cycle.response_started
        else:
            may_answer = cycle is None or cycle.response_complete
        self._phase = _CLOSING
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the app waiting on this request's body hears it
            cycle.message_event.set()
        if not may_answer or self.transport.is_closing():
            self.transport.close()
            return
        self.transport.write(refusal_bytes(refusal, self.server_state.default_headers))
        self.transport.write_eof()
        self._timer = self.loop.call_later(LINGER_S, self._deadline)


def _malformed(reason: str) -> EdgeRefusal:
    return EdgeRefusal(400, f"Malformed HTTP request: {reason.rstrip('.')}.",
                       "invalid_http_request")


def _too_large_head() -> EdgeRefusal:
    return EdgeRefusal(431, "The request's header fields are too large or too many.",
                       "request_header_fields_too_large")


def protocol_factory(limits: EdgeLimits) -> partial[GatewayHttpProtocol]:
    """What uvicorn's ``http=`` takes: a picklable callable (``--workers`` spawns processes)
    building a :class:`GatewayHttpProtocol` with ``limits``."""
    return partial(GatewayHttpProtocol, limits=limits)
