"""A hostile client cannot take the edge down: slow heads and bodies are cut, oversized and
malformed heads refused with OpenAI-shaped errors, and legitimate requests keep being served
while each attack runs. Real gateways on loopback, raw sockets."""

from __future__ import annotations

import asyncio
import json
import resource
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from gateway.http.server import raise_open_file_limit
from tests.conftest import GatewayFactory, ServerProcess, upstream_model

HANG_GUARD_S = 20.0
"""Only against a hang: a test waits on the gateway's own deadlines, never times them."""

HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.5
CHAT = b"POST /v1/chat/completions HTTP/1.1\r\nhost: tiergate\r\n"

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]
T = TypeVar("T")


@pytest.fixture(scope="module")
def edge(gateway_factory: GatewayFactory, upstream: ServerProcess) -> ServerProcess:
    return gateway_factory({"models.echo": upstream_model(upstream, "echo"),
                            "server": {"header_timeout_s": HEADER_TIMEOUT_S,
                                       "body_timeout_s": BODY_TIMEOUT_S}})


async def connect(server: ServerProcess) -> Connection:
    host, port = server.url.removeprefix("http://").split(":")
    assert host == "127.0.0.1"
    return await asyncio.open_connection(host, int(port))


async def guarded(awaitable: Awaitable[T]) -> T:
    return await asyncio.wait_for(awaitable, HANG_GUARD_S)


async def send(writer: asyncio.StreamWriter, data: bytes) -> None:
    """Write what the gateway still takes (it may close on us mid-way: that is the point)."""
    try:
        writer.write(data)
        await writer.drain()
    except ConnectionError:
        pass


async def answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """Everything the gateway sends until it closes the connection: status, headers, body."""
    raw = await guarded(reader.read())
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def assert_openai_error(status: int, headers: dict[str, str], body: bytes,
                        expected: int | None = None) -> None:
    assert 400 <= status < 500 if expected is None else status == expected, (status, body)
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["message"]


async def legit(client: httpx.AsyncClient, server: ServerProcess) -> None:
    response = await client.post(server.url + "/v1/chat/completions", json={
        "model": "echo", "messages": [{"role": "user", "content": "still served"}]})
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "echo: still served"


async def under_attack(server: ServerProcess, attack: Awaitable[Any]) -> Any:
    """Run ``attack`` while a legitimate client keeps sending chat completions; what the
    attack returned, once at least one legitimate request succeeded during it."""
    async with httpx.AsyncClient(timeout=HANG_GUARD_S) as client:
        await legit(client, server)  # warm: the pool's connection is opened before the attack
        running = asyncio.ensure_future(attack)
        served = 0
        while not running.done() or served == 0:
            await legit(client, server)
            served += 1
        return await running


def rss_kb(server: ServerProcess) -> int:
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def trickle(writer: asyncio.StreamWriter, every_s: float) -> None:
    """One byte every ``every_s`` until the gateway stops listening."""
    while not writer.is_closing():
        await send(writer, b"a")
        await asyncio.sleep(every_s)


async def test_slowloris_heads_are_cut_at_the_header_timeout(edge: ServerProcess) -> None:
    async def attack() -> tuple[list[Any], list[bytes]]:
        slow = [await connect(edge) for _ in range(200)]
        silent = [await connect(edge) for _ in range(20)]  # connect, send nothing
        reused = await connect(edge)  # one good request first, then a slow head
        reused[1].write(b"GET /health HTTP/1.1\r\nhost: tiergate\r\n\r\n")
        first = await guarded(reused[0].readuntil(b"\r\n\r\n"))
        length = int(first.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        await guarded(reused[0].readexactly(length))
        slow.append(reused)
        for _, writer in slow:
            writer.write(CHAT + b"x-slow: ")
        tricklers = [asyncio.ensure_future(trickle(writer, 0.25)) for _, writer in slow]
        try:
            answers = await asyncio.gather(*(answer(reader) for reader, _ in slow))
            closed = await asyncio.gather(*(guarded(reader.read()) for reader, _ in silent))
        finally:
            for task in tricklers:
                task.cancel()
            for _, writer in slow + silent:
                writer.close()
        return answers, closed

    answers, closed = await under_attack(edge, attack())
    for status, headers, body in answers:  # bytes kept coming, yet the head had to end
        assert_openai_error(status, headers, body, 408)
        assert json.loads(body)["error"]["code"] == "request_timeout"
    assert closed == [b""] * 20  # nothing of a request arrived: closed without an answer


async def test_slow_body_is_cut_at_the_body_timeout(edge: ServerProcess) -> None:
    async def attack() -> list[Any]:
        slow = [await connect(edge) for _ in range(20)]
        for _, writer in slow:
            writer.write(CHAT + b"content-type: application/json\r\n"
                                b"content-length: 1000\r\n\r\n{")
        tricklers = [asyncio.ensure_future(trickle(writer, 0.2)) for _, writer in slow]
        try:
            return await asyncio.gather(*(answer(reader) for reader, _ in slow))
        finally:
            for task in tricklers:
                task.cancel()
            for _, writer in slow:
                writer.close()

    for status, headers, body in await under_attack(edge, attack()):
        assert_openai_error(status, headers, body, 408)
        assert "body" in json.loads(body)["error"]["message"]


async def test_a_head_and_body_split_across_reads_are_served(edge: ServerProcess) -> None:
    """The deadlines bound a request, not its reads: a client pausing within them is served."""
    payload = json.dumps({"model": "echo", "messages": [{"role": "user", "content": "hi"}]})
    reader, writer = await connect(edge)
    for part in [CHAT[:20], CHAT[20:] + b"content-type: application/json\r\n",
                 f"content-length: {len(payload)}\r\nconnection: close\r\n\r\n".encode(),
                 payload[:10].encode(), payload[10:].encode()]:
        writer.write(part)
        await writer.drain()
        await asyncio.sleep(HEADER_TIMEOUT_S / 10)
    status, _, body = await answer(reader)
    writer.close()
    assert status == 200 and json.loads(body)["choices"][0]["message"]["content"] == "echo: hi"


async def test_pipelined_requests_are_all_answered(edge: ServerProcess) -> None:
    """Requests sent back to back on one connection (HTTP/1.1 pipelining) each get their
    answer: the deadlines of a request waiting its turn do not run out on it."""
    reader, writer = await connect(edge)
    health = b"GET /health HTTP/1.1\r\nhost: tiergate\r\n\r\n"
    writer.write(health * 3 + health.replace(b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n"))
    raw = await guarded(reader.read())
    writer.close()
    assert raw.count(b"HTTP/1.1 200 OK\r\n") == 4, raw


async def oversized_heads(server: ServerProcess, heads: list[bytes]) -> list[Any]:
    """Send each head on a connection of its own, all at once; the answers."""
    async def one(head: bytes) -> Any:
        reader, writer = await connect(server)
        try:
            await send(writer, head)
            return await answer(reader)
        finally:
            writer.close()

    return await asyncio.gather(*(one(head) for head in heads))


async def test_huge_headers_are_refused_431_in_bounded_memory(edge: ServerProcess) -> None:
    huge = CHAT + b"x-huge: " + b"a" * (4 * 1024 * 1024) + b"\r\n\r\n"  # 4 MiB, one header
    before = rss_kb(edge)
    answers = await under_attack(edge, oversized_heads(edge, [huge] * 8))
    for status, headers, body in answers:
        assert_openai_error(status, headers, body, 431)
        assert json.loads(body)["error"]["code"] == "request_header_fields_too_large"
    # 32 MiB sent; the gateway reads a head only to max_header_bytes (+ one read) before
    # refusing it. Generous: the legitimate requests served meanwhile cost memory too.
    assert rss_kb(edge) - before < 16 * 1024


async def test_many_headers_are_refused_431(edge: ServerProcess) -> None:
    many = CHAT + b"".join(b"x-h%d: v\r\n" % i for i in range(10_000)) + b"\r\n"
    before = rss_kb(edge)
    for status, headers, body in await under_attack(edge, oversized_heads(edge, [many] * 8)):
        assert_openai_error(status, headers, body, 431)
    assert rss_kb(edge) - before < 16 * 1024


async def test_header_bytes_are_limited_exactly_whatever_the_reads(
        edge: ServerProcess) -> None:
    """``max_header_bytes`` (32 KiB of names and values) holds for a head that comes in one read
    (checked once it is complete) as for one in many: 431 just past it, served just below."""
    def head(value_bytes: int) -> bytes:  # four headers of names and values summing to it
        each = value_bytes // 4 - len(b"x-big-0")
        fields = b"".join(b"x-big-%d: %s\r\n" % (i, b"v" * each) for i in range(4))
        return CHAT + fields + b"content-type: application/json\r\n"

    body = b'{"model":"echo","messages":[{"role":"user","content":"hi"}]}'
    limit = 32 * 1024 - 200  # room for the request's own host/content-* fields
    below = head(limit) + b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body) + body
    past = head(32 * 1024 + 64) + b"content-length: 2\r\n\r\n{}"
    whole, = await oversized_heads(edge, [past])
    assert_openai_error(*whole, 431)

    async def trickled(data: bytes) -> tuple[int, dict[str, str], bytes]:
        reader, writer = await connect(edge)
        for start in range(0, len(data), 4096):  # many reads of one head
            await send(writer, data[start:start + 4096])
        result = await guarded(answer(reader))
        writer.close()
        return result

    assert_openai_error(*await trickled(past), 431)
    status, _, served = (await oversized_heads(edge, [below]))[0]
    assert status == 200, served
    status, _, served = await trickled(below)
    assert status == 200, served


MALFORMED = {
    "content-length and transfer-encoding":
        CHAT + b"content-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
    "negative content-length": CHAT + b"content-length: -1\r\n\r\n",
    "1 MB path": b"GET /" + b"a" * 1_000_000 + b" HTTP/1.1\r\nhost: tiergate\r\n\r\n",
    "control character in a header value": CHAT + b"x-bad: a\x01b\r\n\r\n",
    "control character in a header name": CHAT + b"x-\x01bad: ab\r\n\r\n",
    "not a method": b"G\x00T / HTTP/1.1\r\nhost: tiergate\r\n\r\n",
    "path not ASCII": b"GET /\xff HTTP/1.1\r\nhost: tiergate\r\n\r\n",
    "not HTTP at all": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,
}


async def test_malformed_requests_get_openai_shaped_4xx(edge: ServerProcess) -> None:
    answers = await under_attack(edge, oversized_heads(edge, list(MALFORMED.values())))
    for name, (status, headers, body) in zip(MALFORMED, answers, strict=True):
        assert_openai_error(status, headers, body, 414 if name == "1 MB path" else None)


def test_serve_raises_the_open_file_limit_to_the_hard_limit(edge: ServerProcess) -> None:
    """Each connection holds a file descriptor: the gateway takes all it is allowed."""
    limits = Path(f"/proc/{edge.process.pid}/limits").read_text()
    soft, hard = next(line.split()[3:5] for line in limits.splitlines()
                      if line.startswith("Max open files"))
    assert soft == hard or hard == "unlimited"
    assert f"Open-file limit: {soft}" in edge.logs()
    own_soft, own_hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if own_hard == resource.RLIM_INFINITY:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(own_soft, 256), own_hard))
        assert raise_open_file_limit() == own_hard
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (own_hard, own_hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (own_soft, own_hard))
