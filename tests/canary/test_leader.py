"""The canary leader lock against a real redis-server."""

from __future__ import annotations

import asyncio
import uuid

from canary.leader import LeaderLock
from tests.conftest import RedisProcess, free_port


async def test_one_leader_and_takeover_after_the_ttl(redis_server: RedisProcess) -> None:
    key = f"test:leader:{uuid.uuid4().hex}"
    first = LeaderLock(redis_server.url, key, ttl_s=0.4)
    second = LeaderLock(redis_server.url, key, ttl_s=0.4)
    try:
        assert await first.acquire()
        assert not await second.acquire()
        assert await first.holder() == first.owner
        await asyncio.sleep(0.25)
        assert await first.acquire()  # renewed: still the leader past the first TTL
        await asyncio.sleep(0.25)
        assert not await second.acquire()
        # The leader stops renewing (it died or hangs): the other takes over after the TTL.
        await asyncio.sleep(0.5)
        assert await second.acquire()
        assert not await first.acquire()
        assert not first.held
        await second.release()  # a clean shutdown hands over at once
        assert await first.acquire()
    finally:
        await first.release()
        await second.release()


async def test_without_redis_the_process_leads() -> None:
    lock = LeaderLock(None, "unused", ttl_s=1)
    assert await lock.acquire()
    assert lock.held


async def test_unreachable_redis_means_not_leader() -> None:
    lock = LeaderLock(f"redis://127.0.0.1:{free_port()}/0", "test:leader:down", ttl_s=1)
    assert not await lock.acquire()
    assert not lock.held
    await lock.release()
