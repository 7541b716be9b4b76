"""Serving: how long idle client connections stay open (``server.keep_alive_s``)."""

from __future__ import annotations

import socket
import time

from tests.conftest import GatewayFactory


def idle_lifetime(url: str, wait_s: float) -> float | None:
    """Seconds until the gateway closes an idle connection after one request; ``None``: still
    open after ``wait_s``."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=wait_s + 5) as conn:
        conn.sendall(b"GET /health HTTP/1.1\r\nhost: tiergate\r\n\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += conn.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200"), answer
        idle_from = time.monotonic()
        conn.settimeout(wait_s)
        try:
            while conn.recv(65536):  # the rest of the body, then the end of the connection
                pass
        except TimeoutError:
            return None
        return time.monotonic() - idle_from


def test_idle_client_connections_stay_open_for_keep_alive_s(
        gateway_factory: GatewayFactory) -> None:
    short = gateway_factory({"server": {"keep_alive_s": 1.0}})
    lifetime = idle_lifetime(short.url, wait_s=10)
    assert lifetime is not None and 0.8 <= lifetime < 5
    default = gateway_factory({})  # 75 s: longer than clients' own expiry (httpx: 5 s)
    assert idle_lifetime(default.url, wait_s=6) is None
