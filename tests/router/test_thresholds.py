"""Thresholds: local reads, live changes across replicas through a real Redis, outages."""

from __future__ import annotations

import asyncio
import signal
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import redis

from gateway.http.app import create_app
from gateway.http.auth import hash_key
from gateway.kernel.errors import ServiceUnavailableError
from gateway.settings import Settings
from router.thresholds import ThresholdError, ThresholdStore
from tests.conftest import RedisProcess, ServerProcess, upstream_model

HANG_S = 60.0


async def wait_for(predicate: Callable[[], bool]) -> None:
    """Wait until ``predicate`` holds (polled; the deadline only guards against a hang)."""
    deadline = time.monotonic() + HANG_S
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"still not true after {HANG_S:.0f} s")
        await asyncio.sleep(0.01)


async def test_in_process_store() -> None:
    store = ThresholdStore({"auto": 0.5})
    await store.start()
    assert store.get("auto") == 0.5
    await store.set("auto", 0.3)
    assert store.get("auto") == 0.3
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ThresholdError):
            await store.set("auto", bad)
    with pytest.raises(ThresholdError):
        await store.set("nope", 0.5)
    gain = ThresholdStore({"auto": 0.0}, ranges={"auto": (-1.0, 1.0)})
    await gain.set("auto", -0.2)  # a gain score: escalate when large is expected to help
    assert gain.get("auto") == -0.2
    with pytest.raises(ThresholdError, match=r"\[-1, 1\]"):
        await gain.set("auto", -1.5)


async def test_a_change_reaches_every_replica_within_a_second(redis_server: RedisProcess) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    replicas = [ThresholdStore({"auto": 0.5, "cheap": 0.7}, redis_server.url, prefix)
                for _ in range(3)]
    for replica in replicas:
        await replica.start()
    try:
        await wait_for(lambda: all(r.connected for r in replicas))
        await replicas[0].set("auto", 0.25)
        await wait_for(lambda: all(r.get("auto") == 0.25 for r in replicas))
        assert replicas[2].get("cheap") == 0.7
        # A replica that starts later reads the stored value, not its default.
        late = ThresholdStore({"auto": 0.5, "cheap": 0.7}, redis_server.url, prefix)
        await late.start()
        await wait_for(lambda: late.get("auto") == 0.25)
        await late.aclose()
    finally:
        for replica in replicas:
            await replica.aclose()


async def test_redis_outage_never_blocks_reads(redis_server: RedisProcess) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    writer = ThresholdStore({"auto": 0.5}, redis_server.url, prefix)
    reader = ThresholdStore({"auto": 0.5}, redis_server.url, prefix)
    await writer.start()
    await reader.start()
    try:
        await wait_for(lambda: reader.connected and writer.connected)
        await writer.set("auto", 0.4)
        await wait_for(lambda: reader.get("auto") == 0.4)
        redis_server.stop()
        await wait_for(lambda: not reader.connected)
        assert reader.get("auto") == 0.4  # the last known value, served from memory
        redis_server.start()
        await wait_for(lambda: reader.connected and writer.connected)
        await writer.set("auto", 0.6)
        await wait_for(lambda: reader.get("auto") == 0.6)
    finally:
        redis_server.start()
        await writer.aclose()
        await reader.aclose()


# -- a change Redis does not take is refused, and applied nowhere ---------------------------------

async def test_a_change_while_redis_is_down_is_refused_and_applied_nowhere(
        redis_server: RedisProcess) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    writer = ThresholdStore({"auto": 0.5}, redis_server.url, prefix)
    reader = ThresholdStore({"auto": 0.5}, redis_server.url, prefix)
    await writer.start()
    await reader.start()
    try:
        await wait_for(lambda: reader.connected and writer.connected)
        redis_server.stop()
        with pytest.raises(ServiceUnavailableError, match="not applied") as refused:
            await writer.set("auto", 0.2)
        assert refused.value.status == 503 and refused.value.retry_after
        assert writer.get("auto") == 0.5  # not here either: replicas never disagree
        redis_server.start()
        await wait_for(lambda: reader.connected and writer.connected)
        await asyncio.sleep(0.3)  # nothing was stored: no replica applies it late
        assert writer.get("auto") == reader.get("auto") == 0.5
        await writer.set("auto", 0.3)  # Redis back: changes go through again
        await wait_for(lambda: reader.get("auto") == 0.3)
    finally:
        redis_server.start()
        await writer.aclose()
        await reader.aclose()


@pytest.mark.parametrize("frozen", ["before the change", "between its two commands"])
async def test_a_change_redis_takes_too_long_for_is_dropped_not_applied_later(
        redis_server: RedisProcess, frozen: str) -> None:
    """A frozen Redis (SIGSTOP) that wakes after the writer answered 503 must not apply the
    change it finds waiting in its socket (the write's deadline is on Redis's clock)."""
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    writer = ThresholdStore({"auto": 0.5}, redis_server.url, prefix)
    writer.shared.write_timeout_s = 0.5
    reader = ThresholdStore({"auto": 0.5}, redis_server.url, prefix)
    await writer.start()
    await reader.start()
    process = redis_server.process
    assert process is not None
    client = writer.shared._redis
    server_time = client.time

    async def time_then_freeze() -> tuple[int, int]:
        answer: tuple[int, int] = await server_time()
        process.send_signal(signal.SIGSTOP)  # the script is sent to a frozen Redis
        return answer

    try:
        await wait_for(lambda: reader.connected and writer.connected)
        if frozen == "before the change":
            process.send_signal(signal.SIGSTOP)
        else:
            client.time = time_then_freeze
        with pytest.raises(ServiceUnavailableError):  # refused, not hung (a hang guard only)
            await asyncio.wait_for(writer.set("auto", 0.1), HANG_S)
        assert writer.get("auto") == 0.5
        await asyncio.sleep(0.7)  # past the deadline, then Redis runs what waits for it
    finally:
        process.send_signal(signal.SIGCONT)
    try:
        await wait_for(lambda: reader.connected and writer.connected)
        await asyncio.sleep(0.5)
        stored = redis.Redis(port=redis_server.port).hget(prefix + "tiergate:thresholds", "auto")
        assert stored is None
        assert writer.get("auto") == reader.get("auto") == 0.5
    finally:
        await writer.aclose()
        await reader.aclose()


async def test_the_refusal_names_no_password() -> None:
    with socket.socket() as sock:  # bound, not listening: connections are refused
        sock.bind(("127.0.0.1", 0))
        url = f"redis://:thresholdPW-31337@127.0.0.1:{sock.getsockname()[1]}/0"
        store = ThresholdStore({"auto": 0.5}, url, "t:")
        await store.start()
        try:
            with pytest.raises(ServiceUnavailableError) as refused:
                await store.set("auto", 0.2)
        finally:
            await store.aclose()
    assert "thresholdPW-31337" not in str(refused.value) + str(refused.value.body())
    assert store.get("auto") == 0.5


async def test_the_admin_api_answers_503_and_keeps_the_value(
        redis_server: RedisProcess, upstream: ServerProcess, tmp_path: Path) -> None:
    settings = Settings.model_validate({
        "models": {"echo": upstream_model(upstream, "echo")},
        "routes": {"auto": {"mode": "fixed", "small": "echo", "large": "echo"}},
        "records": {"sink": "none"}, "telemetry": {"tracing": False},
        "canary": {"dir": str(tmp_path / "canary")}, "redis_url": redis_server.url,
        "auth": {"admin_keys": [{"id": "sre", "sha256": hash_key("tg-admin-thresholds")}]}})
    app = create_app(settings)
    admin = {"authorization": "Bearer tg-admin-thresholds"}
    path = "/admin/routes/auto/threshold"
    async with app.lifespan(), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gateway") as http:
        assert app.gateway.router is not None
        await wait_for(lambda: app.gateway.router is not None
                       and app.gateway.router.thresholds.connected)
        assert (await http.put(path, json={"threshold": 0.4}, headers=admin)).status_code == 200
        redis_server.stop()
        try:  # each step with a hang guard: a hang says where it happened
            refused = await asyncio.wait_for(
                http.put(path, json={"threshold": 0.2}, headers=admin), HANG_S)
            assert refused.status_code == 503, refused.text
            error = refused.json()["error"]
            assert error["type"] == "service_unavailable" and "not applied" in error["message"]
            assert int(refused.headers["retry-after"]) >= 1
            after = (await asyncio.wait_for(http.get(path, headers=admin), HANG_S)).json()
            assert after["threshold"] == 0.4 and after["shared"] is True
        finally:
            redis_server.start()
