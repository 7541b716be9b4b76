"""Escalation thresholds per route, changeable live and shared by every replica.

The request path reads only a local dict (:meth:`ThresholdStore.get`), never the network, so a
Redis outage cannot slow or block a request. Changes (:meth:`ThresholdStore.set`, from the admin
API) go to Redis when it is configured: the value is stored in a hash (the source of truth for
replicas that start later) and published on a channel; every replica's subscriber updates its
local dict as the message arrives (well under a second). Without Redis, changes are in-process.
While Redis is unreachable a replica keeps serving with the last values it knew and reconnects
in the background; on reconnect it reloads the hash.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any

log = logging.getLogger("tiergate.thresholds")

HASH = "tiergate:thresholds"
CHANNEL = "tiergate:thresholds:changed"


class ThresholdError(ValueError):
    """A threshold outside its verifier's score range, or for a route that does not exist."""


class ThresholdStore:
    def __init__(self, defaults: dict[str, float], redis_url: str | None = None,
                 prefix: str = "", ranges: dict[str, tuple[float, float]] | None = None) -> None:
        self.values = dict(defaults)
        self.ranges = ranges or {}
        """Per route, the scores its verifier can give (default [0, 1]): a P(small not good
        enough) is a probability; a gain score (P(large right) - P(small right)) is in [-1, 1]."""
        self.redis_url = redis_url
        self.hash = prefix + HASH
        self.channel = prefix + CHANNEL
        self._redis: Any = None
        self._listener: asyncio.Task[None] | None = None
        self.connected = False

    def get(self, route: str) -> float:
        return self.values[route]

    def validate(self, route: str, value: float) -> None:
        if route not in self.values:
            raise ThresholdError(f"no route {route!r}")
        low, high = self.ranges.get(route, (0.0, 1.0))
        if not (isinstance(value, int | float) and math.isfinite(value) and low <= value <= high):
            raise ThresholdError(f"route {route}'s threshold is a score in [{low:g}, {high:g}]")

    async def set(self, route: str, value: float) -> None:
        """Change a route's threshold here and, with Redis, on every replica."""
        self.validate(route, value)
        self.values[route] = float(value)
        if self._redis is not None:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(self.hash, route, repr(float(value)))
                pipe.publish(self.channel, route)
                await pipe.execute()

    # -- Redis -------------------------------------------------------------------------------

    async def start(self) -> None:
        if self.redis_url is None:
            return
        import redis.asyncio as redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # No retries inside the client: the listener below notices an outage at once, serves
        # from memory meanwhile, and reconnects with its own backoff.
        self._redis = redis.from_url(self.redis_url, socket_connect_timeout=2,
                                     socket_timeout=5, retry=Retry(NoBackoff(), 0))
        self._listener = asyncio.create_task(self._listen(), name="threshold-listener")

    async def aclose(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
        if self._redis is not None:
            await self._redis.aclose()

    async def _load(self) -> None:
        stored = await self._redis.hgetall(self.hash)
        for raw_route, raw_value in stored.items():
            route = raw_route.decode()
            if route in self.values:
                self.values[route] = float(raw_value)

    async def _listen(self) -> None:
        delay = 0.2
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(self.channel)
                    await self._load()  # after subscribing: no change can fall in between
                    self.connected, delay = True, 0.2
                    while True:
                        message = await pubsub.get_message(ignore_subscribe_messages=True,
                                                           timeout=1.0)
                        if message is None:
                            await pubsub.ping()  # an outage shows up within a second
                            continue
                        if message.get("type") != "message":  # e.g. the ping's pong
                            continue
                        route = message["data"].decode()
                        raw = await self._redis.hget(self.hash, route)
                        if raw is not None and route in self.values:
                            self.values[route] = float(raw)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis down: keep serving with what we know
                if self.connected:
                    log.warning("thresholds: lost Redis (%s); serving with the last values", exc)
                self.connected = False
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
