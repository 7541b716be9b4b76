"""The replicated in-memory map (thresholds, rollbacks) against a real redis-server."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

from gateway.sharedmap import SharedMap
from tests.conftest import RedisProcess


def board(url: str | None, prefix: str, changes: list[tuple[str, Any]] | None = None,
          defaults: dict[str, Any] | None = None) -> SharedMap[dict[str, Any]]:
    return SharedMap("test", url, prefix + ":hash", prefix + ":channel", encode=json.dumps,
                     decode=json.loads, defaults=defaults,
                     on_change=None if changes is None else
                     lambda key, value: changes.append((key, value)))


async def until(condition: Any) -> None:
    """Replicas converge within a second (the issue's bar for threshold changes)."""
    async with asyncio.timeout(1.0):
        while not condition():  # noqa: ASYNC110 - polling other replicas' state
            await asyncio.sleep(0.01)


async def test_set_and_delete_reach_every_replica(redis_server: RedisProcess) -> None:
    prefix = f"test:{uuid.uuid4().hex}"
    seen: list[tuple[str, Any]] = []
    a, b = board(redis_server.url, prefix), board(redis_server.url, prefix, seen)
    await a.start()
    await b.start()
    try:
        await until(lambda: a.connected and b.connected)
        await a.set("small", {"to": "small-pinned"})
        await until(lambda: b.values.get("small") == {"to": "small-pinned"})
        late = board(redis_server.url, prefix)  # a replica that starts later loads the hash
        await late.start()
        await until(lambda: late.values.get("small") == {"to": "small-pinned"})
        await b.delete("small")
        await until(lambda: "small" not in a.values and "small" not in late.values)
        assert seen == [("small", {"to": "small-pinned"}), ("small", None)]
        await late.aclose()
    finally:
        await a.aclose()
        await b.aclose()


async def test_deleting_restores_the_default_in_process() -> None:
    seen: list[tuple[str, Any]] = []
    local = board(None, "unused", seen, defaults={"auto": {"v": 1}})
    await local.set("auto", {"v": 2})
    await local.set("auto", {"v": 2})  # no change, no event
    await local.delete("auto")
    assert local.values == {"auto": {"v": 1}}
    assert seen == [("auto", {"v": 2}), ("auto", {"v": 1})]
