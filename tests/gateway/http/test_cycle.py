"""The response cycle writes every head as uvicorn's own ``send`` does: the same bytes, the same
state left for the body, the same errors (:mod:`gateway.http.cycle`)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from gateway.http.cycle import ResponseCycle

DEFAULT_HEADERS = [(b"date", b"Mon, 07 Dec 2026 23:00:00 GMT"), (b"server", b"uvicorn")]
STATE = ("response_started", "response_complete", "chunked_encoding",
         "expected_content_length", "keep_alive", "waiting_for_100_continue")


class Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)


class Flow:
    write_paused = False


def cycle(kind: type[RequestResponseCycle], method: str, keep_alive: bool,
          default_headers: list[tuple[bytes, bytes]]) -> tuple[RequestResponseCycle, Transport]:
    transport = Transport()
    made = kind(scope={"method": method},  # type: ignore[typeddict-item]
                transport=transport,  # type: ignore[arg-type]
                flow=Flow(), logger=logging.getLogger("test"),  # type: ignore[arg-type]
                access_logger=logging.getLogger("test.access"), access_log=False,
                default_headers=default_headers, message_event=asyncio.Event(),
                expect_100_continue=True, keep_alive=keep_alive, on_response=lambda: None)
    return made, transport


def outcome(kind: type[RequestResponseCycle], messages: list[dict[str, Any]], method: str,
            keep_alive: bool, default_headers: list[tuple[bytes, bytes]]) -> tuple[Any, ...]:
    """What sending ``messages`` writes, the cycle's state after, and the error raised."""
    made, transport = cycle(kind, method, keep_alive, default_headers)

    async def send_all() -> None:
        for message in messages:
            await made.send(message)  # type: ignore[arg-type]

    error = None
    try:
        asyncio.run(send_all())
    except Exception as exc:  # the errors are compared
        error = (type(exc), str(exc))
    return b"".join(transport.written), {k: getattr(made, k) for k in STATE}, error


def same(messages: list[dict[str, Any]], method: str = "POST", keep_alive: bool = True,
         default_headers: list[tuple[bytes, bytes]] = DEFAULT_HEADERS) -> tuple[Any, ...]:
    ours = outcome(ResponseCycle, messages, method, keep_alive, default_headers)
    theirs = outcome(RequestResponseCycle, messages, method, keep_alive, default_headers)
    assert ours == theirs
    return ours


def start(status: int, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {"type": "http.response.start", "status": status, "headers": headers}


JSON_HEADERS = [(b"x-request-id", b"0123abcd"), (b"x-tiergate-cost-usd", b"0.000012"),
                (b"content-type", b"application/json"), (b"content-length", b"2")]


@pytest.mark.parametrize("headers", [
    JSON_HEADERS,
    [(b"content-type", b"text/event-stream")],  # no length: chunked
    [(b"Content-Length", b"2"), (b"X-Mixed-Case", b"Value")],
    [(b"content-length", b"2"), (b"content-length", b"7")],  # the first counts
    [(b"content-length", b"2 ")], [(b"content-length", b"+2")], [(b"content-length", b"x")],
    [(b"content-length", b"")],
    [(b"transfer-encoding", b"chunked"), (b"content-length", b"2")],
    [(b"content-length", b"2"), (b"transfer-encoding", b"Chunked")],
    [(b"connection", b"close"), (b"content-length", b"2")],
    [(b"connection", b"keep-alive, Close"), (b"content-length", b"2")],
    [(b"bad name", b"v"), (b"content-length", b"2")],
    [(b"x-header", b"line\r\nbreak"), (b"content-length", b"2")],
    [(b"x-header", b"tab\tis fine"), (b"content-length", b"2")],
    [],
])
@pytest.mark.parametrize("method", ["POST", "HEAD"])
@pytest.mark.parametrize("keep_alive", [True, False])
def test_a_head_and_its_body_are_uvicorn_s(headers: list[tuple[bytes, bytes]], method: str,
                                          keep_alive: bool) -> None:
    body = {"type": "http.response.body", "body": b"{}"}
    written, _, error = same([start(200, headers), body], method, keep_alive)
    assert written.startswith(b"HTTP/1.1 200 OK\r\n") or error is not None


@pytest.mark.parametrize("status", [200, 204, 304, 404, 499, 599, 600, 99])
def test_every_status_is_uvicorn_s(status: int) -> None:
    same([start(status, [(b"content-type", b"text/plain")])])
    same([start(status, [])], default_headers=[])


def test_headers_as_lists_and_without_defaults_are_uvicorn_s() -> None:
    same([start(200, [[b"content-length", b"0"]])], default_headers=[])  # type: ignore[list-item]
    same([start(200, [(b"content-length", "2")])])  # type: ignore[list-item]  # uvicorn errs
    same([start(200, [(b"a", b"b", b"c")])])  # type: ignore[list-item]


def test_a_second_start_is_uvicorn_s_error() -> None:
    _, _, error = same([start(200, JSON_HEADERS), start(200, JSON_HEADERS)])
    assert error is not None and error[0] is RuntimeError


_TOKEN = st.binary(min_size=1, max_size=12)
_NAMES = st.one_of(st.sampled_from([b"content-length", b"Content-Length", b"connection",
                                    b"transfer-encoding", b"x-request-id", b"content-type"]),
                   _TOKEN)
_VALUES = st.one_of(st.sampled_from([b"0", b"12", b"chunked", b"close", b"keep-alive", b"-1",
                                     b" 3", b"application/json"]), st.binary(max_size=12))


@settings(max_examples=400, deadline=None)
@given(headers=st.lists(st.tuples(_NAMES, _VALUES), max_size=8),
       status=st.sampled_from([200, 201, 204, 304, 400, 500]),
       method=st.sampled_from(["GET", "POST", "HEAD"]), keep_alive=st.booleans(),
       body=st.binary(max_size=8), more_body=st.booleans())
def test_any_head_is_written_as_uvicorn_writes_it(
        headers: list[tuple[bytes, bytes]], status: int, method: str, keep_alive: bool,
        body: bytes, more_body: bool) -> None:
    same([start(status, headers),
          {"type": "http.response.body", "body": body, "more_body": more_body}],
         method, keep_alive)


def test_the_common_heads_do_not_reach_uvicorn_s_send(monkeypatch: pytest.MonkeyPatch) -> None:
    async def refused(self: RequestResponseCycle, message: Any) -> None:
        raise AssertionError(f"uvicorn's send got {message['type']}")

    made, transport = cycle(ResponseCycle, "POST", False, DEFAULT_HEADERS)
    monkeypatch.setattr(RequestResponseCycle, "send", refused)
    for headers in (JSON_HEADERS, [(b"content-type", b"text/event-stream")]):
        made.response_started = False
        asyncio.run(made.send(start(200, headers)))  # type: ignore[arg-type]
    assert made.response_started and b"connection: close\r\n" in transport.written[0]
