"""A small map that every replica holds in memory and changes through Redis.

Reads (``values``) never touch the network, so a Redis outage cannot slow or block the request
path. With Redis configured, :meth:`SharedMap.set` / :meth:`SharedMap.delete` write the value to
a hash (the source of truth for replicas that start later) and publish the key on a channel;
every replica's listener re-reads that key as the message arrives (well under a second). While
Redis is unreachable a replica keeps the last values it knew and reconnects in the background,
reloading the hash on reconnect. Without Redis, changes are in-process. Route thresholds
(:mod:`router.thresholds`) and canary rollbacks (:mod:`canary.monitor`) use it.

**A change that cannot reach Redis is refused, not applied here**
(:class:`~gateway.kernel.errors.ServiceUnavailableError`, 503): replicas never disagree
silently. A change is one script in Redis that writes and publishes only if it runs before a
deadline on Redis's own clock, within the writer's wait (``write_timeout_s``): a Redis that is
down fails at once, and a frozen one that wakes later drops the change instead of applying it
after the writer answered 503. (A Redis that freezes after running the script but before its
answer arrives leaves the outcome open — the 503 says so; every replica, this one included,
follows what Redis holds once it answers.)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from gateway.kernel.errors import ServiceUnavailableError
from gateway.kernel.secrets import redact_error

log = logging.getLogger("tiergate.sharedmap")

V = TypeVar("V")

WRITE_TIMEOUT_S = 2.0
"""How long a change waits for Redis before it is refused (503)."""

# KEYS[1] the hash; ARGV: deadline (Redis clock, microseconds), channel, key, op, value.
_WRITE = """
local now = redis.call('TIME')
if tonumber(now[1]) * 1000000 + tonumber(now[2]) > tonumber(ARGV[1]) then return 0 end
if ARGV[4] == 'set' then redis.call('HSET', KEYS[1], ARGV[3], ARGV[5])
else redis.call('HDEL', KEYS[1], ARGV[3]) end
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
"""


class SharedMap(Generic[V]):
    def __init__(self, name: str, redis_url: str | None, hash_key: str, channel: str,
                 encode: Callable[[V], str], decode: Callable[[bytes], V],
                 defaults: dict[str, V] | None = None,
                 accept: Callable[[str], bool] = lambda key: True,
                 on_change: Callable[[str, V | None], None] | None = None,
                 write_timeout_s: float = WRITE_TIMEOUT_S) -> None:
        self.name = name
        self.write_timeout_s = write_timeout_s
        self.defaults = dict(defaults or {})
        """What a key holds while the hash has no value for it (deleting restores it)."""
        self.values: dict[str, V] = dict(self.defaults)
        self.redis_url = redis_url
        self.hash = hash_key
        self.channel = channel
        self._encode, self._decode, self._accept = encode, decode, accept
        self._on_change = on_change
        self._redis: Any = None
        self._listener: asyncio.Task[None] | None = None
        self._closing = False
        self._pubsub: Any = None
        self.connected = False

    def _apply(self, key: str, value: V | None) -> None:
        if value is None and key in self.defaults:
            value = self.defaults[key]
        if value is None:
            if self.values.pop(key, None) is None:
                return
        else:
            if self.values.get(key) == value:
                return
            self.values[key] = value
        if self._on_change is not None:
            self._on_change(key, value)

    async def set(self, key: str, value: V) -> None:
        """Change ``key`` on every replica (with Redis: only once Redis has it; else 503)."""
        if self._redis is not None:
            await self._write(key, "set", self._encode(value))
        self._apply(key, value)

    async def delete(self, key: str) -> None:
        """Remove ``key`` on every replica (with Redis: only once Redis has it; else 503)."""
        if self._redis is not None:
            await self._write(key, "del", "")
        self._apply(key, None)

    async def _write(self, key: str, op: str, value: str) -> None:
        """Write and publish ``key`` in Redis within ``write_timeout_s``, or raise 503."""
        from redis.exceptions import RedisError

        started = time.monotonic()
        try:
            async with asyncio.timeout(self.write_timeout_s):
                seconds, micros = await self._redis.time()
                # What is left of the wait, on Redis's clock: the script runs in time or not at
                # all, and its time is before this wait ends.
                left = self.write_timeout_s - (time.monotonic() - started)
                deadline = seconds * 1_000_000 + micros + int(max(left, 0.0) * 1_000_000)
                done = await self._redis.eval(_WRITE, 1, self.hash, deadline, self.channel, key,
                                              op, value)
        except TimeoutError as exc:
            raise ServiceUnavailableError(
                f"{self.name}: Redis did not answer within {self.write_timeout_s:g} s; the "
                f"change to {key!r} is not applied here (if Redis took it after all, every "
                "replica follows it once Redis answers)", retry_after=5) from exc
        except RedisError as exc:
            raise ServiceUnavailableError(
                f"{self.name}: cannot reach Redis ({redact_error(exc)}); the change to {key!r} "
                "is not applied on any replica", retry_after=5) from exc
        if not done:
            raise ServiceUnavailableError(
                f"{self.name}: Redis was too slow; the change to {key!r} is not applied on any "
                "replica", retry_after=5)

    async def start(self, listen: bool = True) -> None:
        """Connect to Redis (when configured) and, with ``listen``, follow other replicas'
        changes; ``listen=False`` suits one-shot writers (the CLI)."""
        if self.redis_url is None:
            return
        import redis.asyncio as redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # No retries inside the client: the listener notices an outage at once, serves from
        # memory meanwhile, and reconnects with its own backoff.
        self._redis = redis.from_url(self.redis_url, socket_connect_timeout=2,
                                     socket_timeout=5, retry=Retry(NoBackoff(), 0))
        if listen:
            self._listener = asyncio.create_task(self._listen(), name=f"{self.name}-listener")

    async def aclose(self) -> None:
        self._closing = True
        if self._listener is not None:
            # redis-py's get_message can swallow a cancellation and wait on: closing the
            # subscription's connection first ends that wait; the flag ends the loop.
            if self._pubsub is not None:
                await self._bounded(self._pubsub.aclose())
            self._listener.cancel()
            _, pending = await asyncio.wait([self._listener], timeout=2.0)
            if pending:
                log.warning("%s: the Redis listener did not stop", self.name)
        if self._redis is not None:
            await self._bounded(self._redis.aclose())

    async def _bounded(self, closing: Awaitable[object]) -> None:
        """Close a Redis object without waiting on a connection Redis never answers."""
        from redis.exceptions import RedisError

        try:
            async with asyncio.timeout(2.0):
                await closing
        except (TimeoutError, RedisError, OSError) as exc:
            log.warning("%s: closing the Redis connection: %s", self.name, redact_error(exc))

    async def _load(self) -> None:
        stored = await self._redis.hgetall(self.hash)
        keys = {raw.decode() for raw in stored}
        for raw_key, raw_value in stored.items():
            key = raw_key.decode()
            if self._accept(key):
                self._apply(key, self._decode(raw_value))
        for key in [k for k in list(self.values) if k not in keys]:
            self._apply(key, None)

    async def _listen(self) -> None:
        delay = 0.2
        while not self._closing:
            try:
                async with self._redis.pubsub() as pubsub:
                    self._pubsub = pubsub
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
                        key = message["data"].decode()
                        if not self._accept(key):
                            continue
                        raw = await self._redis.hget(self.hash, key)
                        self._apply(key, None if raw is None else self._decode(raw))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis down: keep serving with what we know
                if self._closing:
                    return
                if self.connected:
                    log.warning("%s: lost Redis (%s); serving with the last values",
                                self.name, redact_error(exc))
                self.connected = False
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
