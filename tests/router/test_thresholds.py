"""Thresholds: local reads, live changes across replicas through a real Redis, outages."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

import pytest

from router.thresholds import ThresholdError, ThresholdStore
from tests.conftest import RedisProcess

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
